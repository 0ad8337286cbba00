"""The one place that turns `device` / `dtype` settings into concrete choices.

`RuntimeConfig.validate` checks the *form* of both settings (no torch import, so a typo fails before
any work); `resolve_device` / `resolve_dtype` decide what `auto` means on this machine and refuse
what this machine cannot do (CUDA without a GPU, float16 on CPU). The pipeline (`difaug.diffusion.loading`) and
the HED network (`difaug.conditions.hed`) both use them, so they can never disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from difaug.core.config import ConfigError, dtype_name

if TYPE_CHECKING:
    import torch


def resolve_device(device: str | None = "auto") -> str:
    """`auto` → `cuda` when a GPU is visible, else `cpu`. An explicit CUDA device without CUDA is an error."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise ConfigError(f"device={device!r} is not a torch device (use auto, cpu, cuda, cuda:N)") from exc
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here; use device=auto or cpu")
    return str(device)


def resolve_dtype(dtype: str | None, device: str, *, cpu_half: bool = False) -> str:
    """`auto` → float16 on CUDA, float32 elsewhere. float16 on CPU is refused unless `cpu_half`:
    many CPU kernels of the diffusion pipeline have no half-precision version and those that do
    are slower than float32."""
    import torch

    kind = torch.device(device).type
    name = dtype_name(dtype or "auto")
    if name == "auto":
        return "float16" if kind == "cuda" else "float32"
    if name == "float16" and kind == "cpu" and not cpu_half:
        raise ConfigError("dtype=float16 is not supported on CPU; use float32 (the default) or bfloat16")
    return name


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a dtype name (any spelling `dtype_name` accepts, `auto` excluded)."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype_name(name)]
