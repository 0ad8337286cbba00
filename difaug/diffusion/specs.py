"""Where a job's weights come from: `ModelSpec`, the model bundle index and its folder names.

A `ModelSpec` names the three weights a job needs: the Stable Diffusion 1.5 base pipeline, the
ControlNet for the job's condition, and the HED annotator weights. Each is a Hugging Face hub id or
a local folder. `JobConfig.model` may name a *bundle*: a folder holding `difaug-models.json`
(written by `difaug.testing.tiny.make_tiny` / `difaug models make-tiny`, or by hand for a set of
downloaded weights), whose entries are paths relative to the bundle folder:

    {"base_model": "stable-diffusion-v1-5",
     "controlnets": {"hed": "sd-controlnet-hed", "seg": "sd-controlnet-seg", "scribble": "sd-controlnet-scribble"},
     "hed_weights": "Annotators"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difaug.core.config import DEFAULT_BASE_MODEL, DEFAULT_CONTROLNETS, DEFAULT_HED_WEIGHTS, JobConfig
from difaug.core.errors import DifaugError

BUNDLE_INDEX = "difaug-models.json"
# The folder names of a bundle written by `make_tiny` (those of the hub repos).
BASE_DIRNAME = "stable-diffusion-v1-5"
HED_DIRNAME = "Annotators"


class ModelLoadError(DifaugError, RuntimeError):
    """Weights that cannot be loaded; the message names the id and how to point at a local copy.
    `permanent`: a missing file or a wrong format, which no retry of the shard task can fix."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent

    def __reduce__(self) -> Any:  # Dask pickles it back to the driver with the flag
        return (_model_load_error, (str(self), self.permanent))


def _model_load_error(message: str, permanent: bool) -> ModelLoadError:
    return ModelLoadError(message, permanent=permanent)


@dataclass(frozen=True)
class ModelSpec:
    """Where the weights of one job come from: hub ids or local folders."""

    base: str = DEFAULT_BASE_MODEL
    controlnet: str = DEFAULT_CONTROLNETS["hed"]
    hed_weights: str = DEFAULT_HED_WEIGHTS

    @classmethod
    def from_config(cls, cfg: JobConfig) -> ModelSpec:
        """Resolve `cfg.model` (a bundle or a base model) and the single-part overrides.

        Precedence per part: an explicit `base_model` / `controlnet` / `hed_weights` (one that
        differs from its default) > the bundle's entry > the default."""
        base, controlnet, hed = DEFAULT_BASE_MODEL, cfg.controlnet_id, DEFAULT_HED_WEIGHTS
        if cfg.model:
            bundle = read_bundle(cfg.model)
            if bundle is None:
                base = cfg.model
            else:
                base = bundle["base_model"]
                hed = bundle.get("hed_weights") or hed
                if not cfg.controlnet:
                    controlnet = _bundle_controlnet(bundle, cfg.condition)
        if cfg.base_model != DEFAULT_BASE_MODEL:
            base = cfg.base_model
        if cfg.hed_weights != DEFAULT_HED_WEIGHTS:
            hed = cfg.hed_weights
        return cls(base=base, controlnet=controlnet, hed_weights=hed)


def _bundle_controlnet(bundle: dict[str, Any], condition: str) -> str:
    nets = bundle.get("controlnets", {})
    if condition not in nets:
        raise ModelLoadError(
            f"{bundle['index']} has no ControlNet for condition {condition!r} "
            f"(it has: {', '.join(sorted(nets)) or 'none'}); add one under "
            f"'controlnets' or pass --controlnet DIR",
            permanent=True,
        )
    return nets[condition]


def read_bundle(path: str | Path) -> dict[str, Any] | None:
    """The bundle index at `path` (a folder with difaug-models.json, or that file) with absolute
    paths, or None when `path` is not a bundle."""
    p = Path(path).expanduser()
    index = p if p.name == BUNDLE_INDEX else p / BUNDLE_INDEX
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, or bytes that are not UTF-8
        reason = f"not UTF-8 text at byte {exc.start}" if isinstance(exc, UnicodeDecodeError) else exc
        raise ModelLoadError(
            f"{index}: not a readable bundle index ({reason}); rebuild the bundle (`difaug models make-tiny DIR`) "
            "or fix its JSON",
            permanent=True,
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("base_model"), str):
        raise ModelLoadError(
            f"{index}: a bundle index needs a 'base_model' entry (a folder name)", permanent=True
        )
    root = index.parent.resolve()

    def absolute(rel: str) -> str:
        return str((root / rel).resolve())

    out: dict[str, Any] = {"index": str(index), "base_model": absolute(data["base_model"])}
    out["controlnets"] = {k: absolute(v) for k, v in (data.get("controlnets") or {}).items()}
    if data.get("hed_weights"):
        out["hed_weights"] = absolute(data["hed_weights"])
    return out
