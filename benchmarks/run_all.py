"""Run every benchmark in quick mode and print each one's last line (`name: value`).

    python benchmarks/run_all.py                 # what `make bench` runs
    python benchmarks/run_all.py --full          # without --quick (long)
    python benchmarks/run_all.py runner_overlap  # only the named ones (with their EXTRA_RUNS)

Figures are printed, never asserted. A benchmark that fails prints its exit code and last error
line instead of a figure; the others still run (exit code 1 at the end if any failed).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Settings run in addition to each benchmark's quick run (without --quick: ~6 s here), each on its own line: the
# overlap at a 20 ms device (the diffss-reference preset's rate: 50 images/s per GPU).
EXTRA_RUNS: dict[str, list[list[str]]] = {"runner_overlap": [["--ms", "20"]]}


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def run_one(
    path: Path, quick: bool, timeout: float, extra: list[str] | None = None
) -> tuple[bool, str, float]:
    cmd = [sys.executable, str(path), *(["--quick"] if quick else []), *(extra or [])]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s", time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        return False, f"exit {res.returncode}: {last_line(res.stderr or res.stdout)}", seconds
    return True, last_line(res.stdout), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="benchmark file stems (default: all)")
    ap.add_argument("--full", action="store_true", help="run without --quick")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per benchmark")
    args = ap.parse_args()
    paths = sorted(
        p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")
    )
    if args.names:
        paths = [p for p in paths if p.stem in args.names]
    failed = 0
    runs = [(p, p.stem, None) for p in paths]
    runs += [(p, f"{p.stem} {' '.join(x)}", x) for p in paths for x in EXTRA_RUNS.get(p.stem, [])]
    for path, label, extra in runs:
        print(f"… {label}", file=sys.stderr, flush=True)
        # An extra setting runs at full size: the overlap's quick run is mostly its head and tail.
        ok, line, seconds = run_one(path, not args.full and extra is None, args.timeout, extra)
        failed += not ok
        print(
            f"{label:<24} {line}   [{seconds:.0f} s]" if ok else f"{label:<24} FAILED {line}",
            flush=True,
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
