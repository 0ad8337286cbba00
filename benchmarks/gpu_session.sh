#!/usr/bin/env bash
# The one prepared GPU check of issue 14 (see benchmarks/README.md, "GPU session").
#
#   bash benchmarks/gpu_session.sh fetch   # HERE (pip works): wheels of what the GPU image lacks → .whl/
#   bash benchmarks/gpu_session.sh run     # THERE (the GPU machine): install them, run the benchmarks
#
# With the device tool: run `fetch` once in the repo root, then one call
#   run(command="bash benchmarks/gpu_session.sh run", carry=[".whl"], timeout_s=600)
# It writes gpu_e2e.txt, gpu_throughput.txt and env.txt under $OUT (or ./gpu-results) and prints
# them. Budget: ~7 min for gpu_e2e (a 2.6 GB random bundle, 32 supports × 4 at 512², three ways,
# options table on 8 supports), ~2.5 min for gpu_throughput (channels_last at batch 16, eager and
# compiled); each is cut by `timeout`, so both report.
#
# The GPU image (KINDS.md) has torch, transformers, accelerate, peft, timm, opencv, pyarrow,
# typer, rich, pyyaml, psutil, cloudpickle, toolz, msgpack, click, jinja2, sortedcontainers; it
# lacks diffusers, dask, distributed and controlnet-aux and a few of their small dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
  diffusers==0.42.1 importlib_metadata==10.2.0
  dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2 tornado==6.6.1 zict==3.0.0
  controlnet_aux==0.0.10
)

case "${1:-}" in
fetch)
  exclude="$(git rev-parse --git-common-dir)/info/exclude"
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
  mkdir -p .whl
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${WHEELS[@]}"
  ls -la .whl && du -sh .whl
  ;;
run)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  results="${OUT:-$PWD/gpu-results}"
  mkdir -p "$results"
  {
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    python3 -c "import torch, diffusers, transformers, dask; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| diffusers', diffusers.__version__, '| transformers', transformers.__version__, '| dask', dask.__version__)"
  } | tee "$results/env.txt"
  # 1. plain diffusers vs generator vs job, options table, host syncs (the issue's headline figures)
  timeout 420 python3 benchmarks/gpu_e2e.py --work /tmp/e2e 2>&1 | grep -v "Loading pipeline components" \
    | tee "$results/gpu_e2e.txt" || echo "gpu_e2e.py stopped (exit $?)" | tee -a "$results/gpu_e2e.txt"
  # 2. batch 16, channels_last, eager and compiled: does it beat gpu_e2e's contiguous default with
  #    compile? (the issue measured contiguous faster in eager; LCM is in gpu_e2e's options table)
  timeout 150 python3 benchmarks/gpu_throughput.py --batches 16 --images 32 --no-lcm --channels-last 2>&1 \
    | tee "$results/gpu_throughput.txt" || echo "gpu_throughput.py stopped (exit $?)" | tee -a "$results/gpu_throughput.txt"
  ;;
*)
  echo "usage: $0 fetch|run" >&2
  exit 2
  ;;
esac
