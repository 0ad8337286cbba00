"""Feed a run's shards to external FSS trainers: file exports, a lazy index, a PyTorch wrapper.

- `export_run(run_dir, out, layout)` — files where a trainer looks (`diffss-bam`, `fss`, `folder`).
- `AuxIndex(run_dir)` — (support image path or sample_id, class_id) → aux images, read lazily.
- `AuxShotDataset(base, index, k, key_fn)` — append K aux shots per support to any FSS episode;
  `hsnet_keys` is the `key_fn` of HSNet-style episodes (HSNet, Matcher, DiffewS).

Names resolve lazily so importing the export (the CLI) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "AuxIndex": "difaug.adapters.index",
    "DriftScoreError": "difaug.adapters.index",
    "hsnet_keys": "difaug.adapters.torch_dataset",
    "AuxKeyError": "difaug.adapters.index",
    "SampleInfo": "difaug.adapters.index",
    "AuxShotDataset": "difaug.adapters.torch_dataset",
    "DictFormat": "difaug.adapters.torch_dataset",
    "TupleFormat": "difaug.adapters.torch_dataset",
    "EpisodeFormat": "difaug.adapters.torch_dataset",
    "binary_mask": "difaug.adapters.torch_dataset",
    "to_tensor": "difaug.adapters.torch_dataset",
    "export_run": "difaug.adapters.export.exporter",
    "ExportError": "difaug.adapters.export.result",
    "ExportResult": "difaug.adapters.export.result",
    "LAYOUTS": "difaug.adapters.export.layouts",
    "open_run": "difaug.adapters.run",
    "RunError": "difaug.adapters.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'difaug.adapters' has no attribute {name!r}")
    return getattr(import_module(module), name)
