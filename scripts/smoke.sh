#!/usr/bin/env bash
# Smoke job for one Python: tiny random models, `difaug generate` on the demo manifest
# (pipelines/demo.yaml: local Dask cluster, CPU), `difaug inspect` and `difaug export --layout folder`.
# Fails on the first non-zero exit. CI runs it on the oldest supported Python.
#
#   scripts/smoke.sh PYTHON [WORKDIR]     e.g. scripts/smoke.sh /tmp/py310/bin/python
#
# PYTHON must have difaug installed (`pip install -e '.[dev]'`); WORKDIR (default a new temp
# folder, removed at the end) receives the models, the run and the export.
set -euo pipefail

python=${1:?usage: scripts/smoke.sh PYTHON [WORKDIR]}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${2:-}
if [[ -z $work ]]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # never the network: the models are local
difaug=("$python" -m difaug)

start=$(date +%s)
"$python" -c 'import sys; print("smoke:", sys.version.split()[0])'
cd "$repo"  # the demo manifest and YAML are repository paths
"${difaug[@]}" models make-tiny "$work/tiny"
"${difaug[@]}" generate --config pipelines/demo.yaml --model "$work/tiny" --out "$work/run" --no-progress
"${difaug[@]}" inspect "$work/run"
"${difaug[@]}" export "$work/run" --layout folder --out "$work/export" --strict
files=$(find "$work/export" -name '*.png' | wc -l)
[[ $files -gt 0 ]] || { echo "smoke: the export wrote no images" >&2; exit 1; }
echo "smoke: ok, $files images exported, $(( $(date +%s) - start )) s"
