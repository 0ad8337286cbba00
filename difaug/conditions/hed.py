"""HED soft edges (controlnet-aux `ControlNetHED_Apache2`) and the `hed` / `scribble` conditions.

Weights: `ControlNetHED.pth` from hub repo `lllyasviel/Annotators` (the file ControlNet 1.1 and
controlnet-aux use), a local folder holding that file, or a path to the file. It is a plain
state dict of `ControlNetHED_Apache2` (keys `norm`, `block1.convs.0.weight`, …, no prefix; float16
tensors), loaded with `torch.load(weights_only=True)` the way `HEDdetector.from_pretrained` does. `make_random_hed_weights` writes a random network in the
same layout for tests and the tiny demo bundle.

The edge map follows `controlnet_aux.hed.HEDdetector.__call__` step by step — HWC3, resize to the
detect resolution (512, the working size's default, whatever the working `resolution`), network on 0..255 float
input, each of the five side outputs bilinearly upsampled to the input size, mean, sigmoid, ×255,
truncated to uint8 — but runs a whole batch per forward pass on the device (grouped by size), with
the upsampling, mean and sigmoid done there too; only the uint8 map comes back to the host. As in
ControlNet's `gradio_hed2image` (what DifFSS ran), the map is then resized with INTER_LINEAR to the
working size when that differs from the detect size.

DifFSS masking (style `diffss`): the foreground mask (`mask == class_id`) is nearest-resized to the
edge map, dilated once with `cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (14, 14))` and multiplied
in; `scribble` then sets 255 where the minimum over channels is > 127, else 0. Style `upstream`
keeps the edge map unmasked and makes scribbles the way `HEDdetector(..., scribble=True)` does
(`nms(x, 127, 3.0)`, Gaussian blur σ=3, > 4 → 255).

Measured agreement with controlnet-aux's per-image `HEDdetector` (CPU, fp32): the uint8 maps differ
by at most 1 level, on a small fraction of pixels (values that sit on a truncation boundary), from
float rounding in batched convolutions and torch-vs-OpenCV bilinear upsampling; see the tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from difaug.conditions import HED_FILENAME, ConditionInput, foreground, prepare_input
from difaug.conditions.resize import hwc3, resize_image, resize_mask
from difaug.core.config import DEFAULT_HED_WEIGHTS
from difaug.core.geometry import ConditionError, working_size
from difaug.core.hub import hub_offline, looks_local

if TYPE_CHECKING:
    import torch

# DifFSS dilates the foreground once with this kernel before multiplying it into the HED map.
DILATE_KERNEL_SIZE = (14, 14)
SCRIBBLE_THRESHOLD = 127


class HedWeightsError(ConditionError):
    """HED weights cannot be found or read; the message names the file and how to supply it."""


class NonFiniteEdgesError(ConditionError):
    """The HED side outputs overflowed (inf/NaN), e.g. in float16; the batch must be redone in fp32."""


# --------------------------------------------------------------------------------------- network


def _hed_module() -> Any:
    """The module that defines `ControlNetHED_Apache2`, without importing all of controlnet-aux.

    `import controlnet_aux` imports every annotator (~5 s, plus optional-dependency warnings). The
    HED file only needs `controlnet_aux.util`, so when controlnet-aux is not imported yet we load
    `controlnet_aux/hed/__init__.py` as a submodule of a private alias package that shares
    controlnet-aux's folder but not its `__init__`. Same source file, same class, same state dict."""
    if "controlnet_aux.hed" in sys.modules:
        return sys.modules["controlnet_aux.hed"]
    alias = "_difaug_controlnet_aux"
    if f"{alias}.hed" in sys.modules:
        return sys.modules[f"{alias}.hed"]
    spec = importlib.util.find_spec("controlnet_aux")
    if spec is None or not spec.submodule_search_locations:
        raise ConditionError("controlnet-aux is not installed; `pip install controlnet-aux`")
    import types

    pkg = types.ModuleType(alias)
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault(alias, pkg)
    try:
        return importlib.import_module(f"{alias}.hed")
    except ImportError:  # an unusual controlnet-aux layout: pay for the full import instead
        return importlib.import_module("controlnet_aux.hed")


def hed_network_class() -> type:
    """controlnet-aux's `ControlNetHED_Apache2` (the architecture of `ControlNetHED.pth`)."""
    return _hed_module().ControlNetHED_Apache2


def make_random_hed_weights(path: Path, seed: int = 0) -> Path:
    """Write a randomly initialised `ControlNetHED_Apache2` state dict, stored like the real file.

    `path` is the file to write (normally named `ControlNetHED.pth`) or a folder to write it into.
    Deterministic for a seed: the same seed gives the same bytes. PyTorch's default conv init
    already gives edge maps with spatial structure (they follow the image's intensity changes);
    `norm` is set to a mid-grey mean so the first layer sees centred input, as the trained net does.
    """
    import torch

    path = Path(path)
    if path.suffix != ".pth":
        path = path / HED_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = hed_network_class()()
    with torch.no_grad():
        net.norm.copy_(torch.tensor([122.0, 116.0, 104.0]).view(1, 3, 1, 1))
    # The real file stores every tensor in float16 (14.7 M parameters, 29.4 MB); so do we, so that
    # the loader is exercised on the same dtypes (load_state_dict upcasts into the fp32 module).
    state = {k: v.detach().to(torch.float16).contiguous().clone() for k, v in net.state_dict().items()}
    from difaug.core import fsio

    return fsio.atomic_write(path, lambda tmp: torch.save(state, tmp), fsync=False)


def _missing_message(what: str) -> str:
    return (
        f"HED weights {what} not found. Supply them with --hed-weights PATH (the file "
        f"{HED_FILENAME} or a folder holding it), or download them once online: "
        f"`huggingface-cli download {DEFAULT_HED_WEIGHTS} {HED_FILENAME}` "
        "(then HF_HUB_OFFLINE=1 runs find them in the cache)"
    )


def local_hed_weights(weights: str) -> Path | None:
    """The local `ControlNetHED.pth` that `weights` names (the file, or a folder holding it), or
    None for a hub repo id (`difaug.core.hub.looks_local`); a local name without the file raises
    `HedWeightsError`. Checked on the driver before the plan, and by `resolve_hed_weights`."""
    if not looks_local(weights):
        return None
    local = Path(weights).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        candidate = local / HED_FILENAME
        if candidate.is_file():
            return candidate
        raise HedWeightsError(_missing_message(f"file {candidate}"))
    raise HedWeightsError(_missing_message(f"file {weights}"))


def resolve_hed_weights(weights: str) -> Path:
    """A local path to `ControlNetHED.pth` for a hub repo id, a folder or a file."""
    local = local_hed_weights(weights)
    if local is not None:
        return local
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(weights, HED_FILENAME))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        note = " (HF_HUB_OFFLINE is set and the file is not in the local cache)" if hub_offline() else ""
        raise HedWeightsError(
            _missing_message(f"{HED_FILENAME} from hub repo {weights}{note}") + f" ({type(e).__name__})"
        ) from None


def resolve_device(device: str | None) -> torch.device:
    """`difaug.core.device.resolve_device` as a `torch.device` (the HED code reads `.type`)."""
    import torch

    from difaug.core import device as devices

    return torch.device(devices.resolve_device(device))


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`difaug.core.device.resolve_dtype` as a `torch.dtype`; float16 is allowed on the CPU here (the
    HED network is small, and its fp16-overflow fallback is tested there)."""
    import torch

    from difaug.core import device as devices

    if isinstance(dtype, torch.dtype):
        return dtype
    return devices.torch_dtype(devices.resolve_dtype(dtype, str(device), cpu_half=True))


_CACHE: dict[tuple[str, str, str], Any] = {}
_CACHE_LOCK = threading.Lock()


def load_hed_network(
    weights: str | Path = DEFAULT_HED_WEIGHTS,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> torch.nn.Module:
    """Load `ControlNetHED_Apache2` from a hub repo id, a folder or a `.pth` file; cached per process.

    Missing weights (e.g. offline with an empty cache) raise one `HedWeightsError` that names the
    file and how to supply it. The network is in eval mode, without gradients, on `device` in
    `dtype` (defaults: CUDA if present, fp16 there, fp32 on CPU), channels_last on CUDA."""
    import torch

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    key = (str(weights), str(dev), str(dt))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        path = resolve_hed_weights(str(weights))
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle/zip errors come in many types; all mean "not a usable file"
            raise HedWeightsError(
                f"cannot read HED weights {path}: {e}. Expected a state dict saved with torch.save "
                f"(the {HED_FILENAME} from {DEFAULT_HED_WEIGHTS})"
            ) from None
        if not isinstance(state, dict):
            raise HedWeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
        net = hed_network_class()()
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise HedWeightsError(
                f"{path} is not a ControlNetHED_Apache2 state dict: {str(e).splitlines()[0]}"
            ) from None
        net = net.float().eval().requires_grad_(False)
        if dev.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        net = net.to(device=dev, dtype=dt)
        _CACHE[key] = net
        return net


def clear_cache() -> None:
    """Forget loaded networks (tests; freeing device memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ----------------------------------------------------------------------------------- edge maps


def _module_device_dtype(net: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(iter(net.parameters()))
    return p.device, p.dtype


def hed_batch(net: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """HED edge maps for a stack of same-size images `(B, H, W, 3) uint8` → `(B, H, W) uint8`.

    One forward pass; upsampling, mean and sigmoid run on the network's device. The arithmetic
    follows HEDdetector: float32 side outputs, mean over the five levels in float32 (a sequential
    sum, as numpy's mean over a 5-long axis), sigmoid in float64, ×255, clip, truncate."""
    import torch
    import torch.nn.functional as F

    device, dtype = _module_device_dtype(net)
    _, height, width, _ = images.shape
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).to(dtype)  # B,3,H,W on the device; uint8 travels, not floats
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        total: torch.Tensor | None = None
        for level in net(x):
            up = level.float()
            if up.shape[-2:] != (height, width):
                up = F.interpolate(up, size=(height, width), mode="bilinear", align_corners=False)
            total = up if total is None else total + up
        assert total is not None
        # Half precision can overflow in the deep blocks; NaN would silently become a black map.
        if dtype != torch.float32 and not bool(torch.isfinite(total).all()):
            raise NonFiniteEdgesError(f"HED side outputs overflowed in {dtype}")
        mean = total / 5.0
        # float64 sigmoid as HEDdetector does; MPS has no float64, where float32 is the best we get.
        wide = torch.float32 if device.type == "mps" else torch.float64
        edge = 1.0 / (1.0 + torch.exp(-mean.to(wide)))
        edge = (edge * 255.0).clamp(0, 255).to(torch.uint8)  # truncation, like numpy astype
        return edge[:, 0].cpu().numpy()


def hed_maps(
    net: torch.nn.Module,
    images: Sequence[np.ndarray],
    batch_size: int = 16,
    fp32_net: Callable[[], torch.nn.Module] | None = None,
) -> list[np.ndarray]:
    """Edge maps `H×W uint8` for images already at their working size, batched by size.

    A chunk whose half-precision side outputs overflow is redone with `fp32_net()` when given."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.shape[:2], []).append(i)
    out: list[np.ndarray | None] = [None] * len(images)
    for idx in groups.values():
        for start in range(0, len(idx), max(1, batch_size)):
            chunk = idx[start : start + max(1, batch_size)]
            stack = np.stack([images[i] for i in chunk])
            try:
                maps = hed_batch(net, stack)
            except NonFiniteEdgesError as e:
                if fp32_net is None:
                    raise
                warnings.warn(f"{e}; redoing {len(chunk)} image(s) in float32", RuntimeWarning, stacklevel=2)
                maps = hed_batch(fp32_net(), stack)
            for i, m in zip(chunk, maps, strict=True):
                out[i] = m
    return [m for m in out if m is not None]


def dilated_foreground(mask: np.ndarray, class_id: int, size: tuple[int, int]) -> np.ndarray:
    """DifFSS's mask for HED: `mask == class_id`, nearest-resized to `size`, dilated once (14×14 ellipse).

    Returns `H×W uint8` of 0/1."""
    import cv2

    fg = resize_mask(foreground(mask, class_id), size)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, DILATE_KERNEL_SIZE)
    return cv2.dilate(fg, kernel, iterations=1)


def mask_edges(edge: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`HWC3(edge) * keep[..., None]`: background edges vanish (keep is 0/1 uint8)."""
    return hwc3(edge) * keep[:, :, None]


def diffss_scribble(masked: np.ndarray) -> np.ndarray:
    """DifFSS scribble: 255 where the minimum over channels is > 127, else 0 (as H×W×3)."""
    binary = np.where(masked.min(axis=2) > SCRIBBLE_THRESHOLD, 255, 0).astype(np.uint8)
    return hwc3(binary)


def upstream_scribble(edge: np.ndarray) -> np.ndarray:
    """controlnet-aux `HEDdetector(..., scribble=True)`: nms(127, σ=3), blur σ=3, > 4 → 255."""
    import cv2

    util = importlib.import_module(_hed_module().__name__.rsplit(".", 1)[0] + ".util")
    detected = util.nms(hwc3(edge), 127, 3.0)
    detected = cv2.GaussianBlur(detected, (0, 0), 3.0)
    detected[detected > 4] = 255
    detected[detected < 255] = 0
    return detected


class HedCondition:
    """`hed` and `scribble` conditions (see the module docstring for the exact steps); a
    `difaug.conditions.ConditionMaker`, built by `make_condition`, which holds the defaults and
    checks style and resolution. `batch_size`: images per HED forward pass (the job's
    `RuntimeConfig.hed_batch_size`)."""

    def __init__(
        self,
        *,
        name: str,
        style: str,
        resolution: int,
        weights: str,
        device: str | None,
        dtype: str | None,
        batch_size: int,
        detect_resolution: int,
    ) -> None:
        if name not in ("hed", "scribble"):
            raise ConditionError(f"HedCondition builds hed or scribble, not {name!r}")
        self.name = name
        self.style = style
        self.resolution = resolution
        self.detect_resolution = detect_resolution
        self.weights = str(weights)
        self.batch_size = batch_size
        self.fallbacks: Counter[str] = Counter()
        self.net = load_hed_network(self.weights, device, dtype)
        self.device, self.dtype = _module_device_dtype(self.net)

    def edges(self, batch: Sequence[ConditionInput]) -> list[np.ndarray]:
        """Unmasked HED maps (`H×W uint8`, working size) for a batch.

        As ControlNet's `gradio_hed2image` (what DifFSS ran): the image is resized to the detect
        resolution for the network, and the map is resized to the working size (`resize_image` of
        the original image at `resolution`) with INTER_LINEAR. At the default 512/512 the two
        sizes agree and nothing is resized."""
        import cv2

        items = [prepare_input(item) for item in batch]
        detect = [resize_image(item.image, self.detect_resolution) for item in items]
        maps = hed_maps(self.net, detect, self.batch_size, fp32_net=self._fp32_net)
        out = []
        for item, edge in zip(items, maps, strict=True):
            h, w = item.image.shape[:2]
            size = working_size(w, h, self.resolution)
            if (edge.shape[1], edge.shape[0]) != size:
                edge = cv2.resize(edge, size, interpolation=cv2.INTER_LINEAR)
            out.append(edge)
        return out

    def _fp32_net(self) -> torch.nn.Module:
        import torch

        return load_hed_network(self.weights, self.device, torch.float32)

    def __call__(self, batch: Sequence[ConditionInput]) -> list[np.ndarray]:
        batch = [prepare_input(item) for item in batch]
        out = []
        for item, edge in zip(batch, self.edges(batch), strict=True):
            if self.style == "upstream":
                out.append(upstream_scribble(edge) if self.name == "scribble" else hwc3(edge))
                continue
            keep = dilated_foreground(item.mask, item.sample.class_id, (edge.shape[1], edge.shape[0]))
            masked = mask_edges(edge, keep)
            out.append(diffss_scribble(masked) if self.name == "scribble" else masked)
        return out

    def __getstate__(self) -> dict[str, Any]:
        # Pickles as its settings; the network reloads (through the per-process cache) on unpickling,
        # so a condition can be handed to a Dask worker without shipping 60 MB of weights.
        state = self.__dict__.copy()
        state.pop("net")
        state["device"], state["dtype"] = str(self.device), str(self.dtype)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.net = load_hed_network(self.weights, state["device"], state["dtype"])
        self.device, self.dtype = _module_device_dtype(self.net)

    def __repr__(self) -> str:
        return (
            f"HedCondition(name={self.name!r}, style={self.style!r}, resolution={self.resolution}, "
            f"weights={self.weights!r}, device={self.device}, dtype={self.dtype})"
        )
