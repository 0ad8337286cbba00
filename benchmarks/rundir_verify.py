"""What verifying a run directory costs: `difaug.run.verify.verify_run` on N shards of S MB.

Every resume, `inspect`, `export` and `AuxIndex` verifies each shard against its marker (size +
sha256). This measures the first verification in a process (every file hashed; the files are in
the OS page cache, as right after a run — a cold disk adds its read time) and a repeat in the same
process (size/mtime/inode cache hits: no hashing).

    python benchmarks/rundir_verify.py                  # 32 shards × 64 MB
    python benchmarks/rundir_verify.py --quick          # 8 shards × 16 MB
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from difaug.run import layout, records, verify


def make_run(out: Path, shards: int, mb: int) -> records.Plan:
    plan = records.Plan(
        config={"num_aux": 1},
        config_fingerprint="bench",
        manifest=records.ManifestRef("manifest.csv", str(out), "bench", shards),
        limit=0,
        rows=shards,
        shard_size=1,
        shards=tuple(records.cut(shards, 1)),
    )
    layout.write_plan(out, plan)
    for s in plan.shards:
        path = layout.shard_path(out, s.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(mb << 20))  # incompressible, like encoded images
        stats = records.ShardStats(
            s.index, (s.start, s.stop), plan.plan_hash, 1, 0, 1, verify.file_record(path, 1)
        )
        layout.write_marker(out, stats)
    return plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=32)
    ap.add_argument("--mb", type=int, default=64, help="size of each shard file")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    shards, mb = (8, 16) if args.quick else (args.shards, args.mb)
    with tempfile.TemporaryDirectory(prefix="difaug-verify-") as tmp:
        out = Path(tmp)
        plan = make_run(out, shards, mb)
        verify._SHA_CACHE.clear()  # make_run hashed them: start this process's verification afresh
        t0 = time.perf_counter()
        first = verify.verify_run(out, plan)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = verify.verify_run(out, plan)
        warm = time.perf_counter() - t0
        assert len(first.done) == len(again.done) == shards
    gb = shards * mb / 1024
    print(f"{shards} shards × {mb} MB = {gb:.2f} GB; {os.cpu_count()} CPUs")
    print(f"first verify in this process: {cold:.2f} s ({gb / cold:.2f} GB/s)")
    print(f"repeat (cache hits): {warm * 1000:.1f} ms")
    print(f"rundir_verify: {gb / cold:.2f} GB/s first, {warm * 1000:.1f} ms repeat ({shards} shards)")


if __name__ == "__main__":
    main()
