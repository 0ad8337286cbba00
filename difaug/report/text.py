"""Report numbers as text: byte sizes, the drift-score histogram and the regeneration numbers, for
the terminal and the page."""

from __future__ import annotations

from difaug.report.data import SCORE_BINS, Regeneration, ScoreStats


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def bin_label(i: int) -> str:
    """The drift-score range of histogram bin `i`, lower end: `0.3`."""
    return f"{i / SCORE_BINS:.1f}"


def text_histogram(stats: ScoreStats, width: int = 30) -> list[str]:
    """One line per bin: `0.0–0.1 │████      12`."""
    top = max(stats.bins, default=0) or 1
    lines = []
    for i, n in enumerate(stats.bins):
        bar = "█" * round(width * n / top)
        lines.append(f"{bin_label(i)}–{bin_label(i + 1)} │{bar:<{width}} {n}")
    return lines


def regeneration_rows(regen: Regeneration) -> list[tuple[str, str]]:
    """The regeneration numbers, as the terminal and the page show them."""
    shares = ", ".join(
        f"{a}: {n} ({share:.0%})"
        for a, (n, share) in enumerate(zip(regen.passed_at, regen.passed_share(), strict=True))
    )
    return [
        ("threshold / attempts", f"drift_iou >= {regen.threshold:g}, at most {regen.max_attempts} attempts"),
        ("passed at attempt", shares),
        ("never passed (best attempt kept)", f"{regen.never_passed} of {regen.images}"),
        ("extra images per kept image", f"{regen.extra_per_kept:.2f} ({regen.extra_images} extra)"),
        ("seconds of the extra images", f"{regen.seconds:,.1f}"),
    ]
