"""What the shared compile cache folder saves: warm-up of a compiled generator, cold vs warm.

Two fresh processes compile the same generator (tiny model on the CPU, or the model at `--model`
on a GPU) into one cache folder (`RuntimeConfig.compile_cache_dir`, by default
`OUT/.difaug-compile-cache` in a job): the first starts from an empty folder, the second finds the
inductor FX-graph cache and the saved `torch.compiler` artefacts, as a second worker, a retry or a
rerun would. Each prints its warm-up (the first batch, compilation included) and the max |Δ| of
its images against eager on the same seeds.

    python benchmarks/compile_cache.py            # CPU: tiny model, ~3 min on 2 busy cores
    python benchmarks/compile_cache.py --quick    # compiles the VAE decoder only (~1 min)

Last line: `compile_cache_speedup: N` (cold warm-up ÷ warm warm-up).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_ONE = r"""
import json, sys, time, numpy as np, torch
torch.set_num_threads(1)
from difaug.core.config import JobConfig, RuntimeConfig
from difaug.diffusion.sampler import AuxGenerator, make_work_items
from difaug.inputs.manifest import Sample
from difaug.diffusion.speed import compile_pipeline
model, cache, parts = sys.argv[1], sys.argv[2], tuple(sys.argv[3].split(","))
device = "cuda" if torch.cuda.is_available() else "cpu"
size = 512 if device == "cuda" else 64
cfg = JobConfig(model=model, steps=2, num_aux=2, condition="hed").validate()
s = Sample(row=1, sample_id="a", image="", mask="", class_id=1, class_name="cat")
items = make_work_items(s, np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8), (size, size), cfg)
gen = AuxGenerator.from_config(cfg, RuntimeConfig(device=device, batch_size=2, compile="off"))
eager = gen.sample(items)
compile_pipeline(gen.pipe, cache_dir=cache, parts=parts)
gen = AuxGenerator(gen.pipe, cfg, batch_size=2, device=device, compile_cache_dir=cache)
t0 = time.perf_counter()
compiled = gen._sample_warm(items)
print(json.dumps({"warmup": time.perf_counter() - t0, "max_diff": float(np.abs(compiled - eager).max()),
                  "warnings": gen.warnings}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="compile the VAE decoder only")
    ap.add_argument("--model", default="", help="a model bundle (default: a fresh tiny one)")
    args = ap.parse_args()
    parts = "decoder" if args.quick else "unet,controlnet,decoder"
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if not model:
            from difaug.testing.tiny import make_tiny

            model = str(make_tiny(Path(tmp) / "tiny"))
        cache = str(Path(tmp) / "cache")
        runs = []
        for label in ("cold cache", "warm cache"):
            res = subprocess.run(
                [sys.executable, "-c", _ONE, model, cache, parts], capture_output=True, text=True
            )
            if res.returncode:
                raise SystemExit(res.stderr[-2000:])
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
            r = runs[-1]
            print(
                f"{label}: warm-up {r['warmup']:.1f} s, max |Δ| vs eager {r['max_diff']:.2e}, warnings {r['warnings']}"
            )
    print(f"compiled parts: {parts}")
    print(f"compile_cache_speedup: {runs[0]['warmup'] / runs[1]['warmup']:.1f}")


if __name__ == "__main__":
    main()
