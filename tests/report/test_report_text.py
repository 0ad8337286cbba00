"""`difaug.report.text`: byte sizes and the text histogram of drift scores."""

from __future__ import annotations

from difaug.report.data import ScoreStats
from difaug.report.text import human_bytes, text_histogram


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (512, 2048, 5 * 1024**3, 3 * 1024**5)] == [
        "512 B",
        "2.0 KiB",
        "5.0 GiB",
        "3072.0 TiB",
    ]


def test_text_histogram_scales_bars_to_the_fullest_bin() -> None:
    stats = ScoreStats(
        rows=6, scored=6, mean=0.5, quantiles={}, bins=[0, 2, 4] + [0] * 7, mean_segments=None, lowest=[]
    )
    lines = text_histogram(stats, width=10)
    assert len(lines) == 10
    assert lines[0] == "0.0–0.1 │           0"
    assert lines[1] == "0.1–0.2 │█████      2"
    assert lines[2] == "0.2–0.3 │██████████ 4"
    assert lines[-1].startswith("0.9–1.0 ")
