"""`AuxShotDataset`: append K auxiliary shots per support to the episodes of any FSS dataset.

Every auxiliary image was generated from its support's mask and resized back to the support's own
size, so it is paired with the *original* support mask, pixel for pixel (DifFSS). The wrapper takes
an episode from the trainer's own dataset, finds the support keys with `key_fn`, fetches up to K
aux images per support from an `AuxIndex`, and appends them as extra shots.

Episode formats (`EpisodeFormat`; pick or write one, the default guesses from the episode type):
- `DictFormat` — dict episodes with `support_imgs` [S,3,H,W] and `support_masks` [S,H,W]
  (HSNet and its descendants). Other `support_*` entries holding one item per shot (names, ignore
  maps) are extended with the paired support's entry so they stay aligned.
- `TupleFormat(images_at, masks_at)` — tuple episodes; the default `(2, 3)` fits
  `(query_img, query_mask, support_imgs, support_masks, …)`. PFENet, BAM and HDMNet return such
  tuples (BAM/HDMNet: `TupleFormat(3, 4)`) but no support paths, so no `key_fn` can name their
  supports: for them use `AuxIndex` inside their `SemData` (docs/adapters.md).
Support images/masks may be stacked tensors (concatenated) or lists (extended).

Where the shots enter the trainer's transform pipeline (pick one):
- `image_form="pil"` or `"cv2"`: the trainer's own transform is the one resize. Each aux image is
  decoded exactly as the trainer reads a support file (`pil`: a PIL RGB image, HSNet / Matcher /
  DiffewS; `cv2`: `H×W×3 float32` RGB from OpenCV, PFENet / BAM / HDMNet) and handed, at the
  support's own size, to `image_transform` (default: the base dataset's `.transform`, HSNet's
  `Resize` + `ToTensor` + `Normalize`): an aux shot then equals what the trainer makes of the same
  image as a support, bit for bit.
- default (`image_form="rgb"`, `shot_transform=None`): after the trainer's transform. Each aux
  image is resized with OpenCV to the size of its paired support mask *in the episode* and turned
  into a tensor with `image_transform` (default: float CHW in [0, 1]). For trainers whose support
  transform cannot be called on one image; it does not match torchvision's `Resize` exactly.
- `shot_transform=fn(image, mask) -> (image, mask)`: before it. Each shot is the aux image (in
  `image_form`; `cv2` for the PFENet family) with the support's original mask from disk (H×W uint8:
  1 = the class, 255 = ignore, else 0, the BAM/PFENet convention), passed through `fn`, which
  should be the trainer's own joint transform. Use this when supports get random crops, flips,
  rotations or padding (PFENet/BAM/HDMNet training): every shot then gets its own random transform,
  exactly like a real shot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from difaug.adapters.index import AuxIndex, AuxKeyError, check_form, decode_as
from difaug.core import imageio
from difaug.core.classes import IGNORE_VALUE
from difaug.inputs.datasets.fss1000 import manifest_class_id_from_hsnet

SupportKey = tuple[str, int]  # (support image path or sample_id, class_id = the mask's value)
KeyFn = Callable[[Any], Sequence[SupportKey]]
ImageTransform = Callable[[np.ndarray], Any]
ShotTransform = Callable[[np.ndarray, np.ndarray], tuple[Any, Any]]
MISSING_POLICIES = ("error", "support")


def to_tensor(image: np.ndarray) -> Any:
    """`H×W×3 uint8` → float32 tensor `3×H×W` in [0, 1] (torchvision's ToTensor)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


def hsnet_keys(episode: Mapping[str, Any]) -> list[SupportKey]:
    """`key_fn` for HSNet-style dict episodes (HSNet, Matcher, DiffewS; PASCAL, COCO and FSS-1000).

    Their `class_id` is 0-based and their `support_names` name the support image (PASCAL: the stem
    `2007_000032`; COCO: `train2014/COCO_train2014_….jpg`; FSS-1000: the `…/<class>/<n>.jpg` path).
    The manifest's class_id is the mask value, HSNet's id + 1 (FSS-1000 with `--class-ids hsnet`)."""
    cid = manifest_class_id_from_hsnet(int(episode["class_id"]))
    return [(str(name), cid) for name in episode["support_names"]]


def binary_mask(mask: np.ndarray, class_id: int) -> np.ndarray:
    """A raw support mask → uint8 {0, 1, 255}: 1 where the class is, 255 where ignored, else 0."""
    out = np.zeros(mask.shape, dtype=np.uint8)
    out[mask == class_id] = 1
    out[mask == IGNORE_VALUE] = IGNORE_VALUE
    return out


def _hw(mask: Any) -> tuple[int, int]:
    shape = tuple(mask.shape)
    if len(shape) < 2:
        raise ValueError(f"a support mask must be at least 2-D (…×H×W), got shape {shape}")
    return int(shape[-2]), int(shape[-1])


class EpisodeFormat(Protocol):
    """Where an episode keeps its support images and masks, and how to append shots to it."""

    def images(self, episode: Any) -> Sequence[Any]: ...

    def masks(self, episode: Any) -> Sequence[Any]: ...

    def append(self, episode: Any, images: list[Any], masks: list[Any], owners: list[int]) -> Any:
        """A new episode with `images[i]`/`masks[i]` appended as shots; `owners[i]` is the index
        of the real support shot i was made from."""
        ...


def _extend(seq: Any, new: list[Any]) -> Any:
    """Append items to a stacked tensor/array (along dim 0) or to a list/tuple."""
    if not new:
        return seq
    if isinstance(seq, torch.Tensor):
        return torch.cat([seq, torch.stack([torch.as_tensor(x, dtype=seq.dtype) for x in new])])
    if isinstance(seq, np.ndarray):
        return np.concatenate([seq, np.stack([np.asarray(x, dtype=seq.dtype) for x in new])])
    if isinstance(seq, tuple):
        return (*seq, *new)
    return [*seq, *new]


@dataclass(frozen=True)
class DictFormat:
    """Dict episodes (HSNet): `support_imgs`, `support_masks` and per-shot `support_*` entries."""

    image_key: str = "support_imgs"
    mask_key: str = "support_masks"
    per_shot_prefix: str = "support_"

    def images(self, episode: Mapping[str, Any]) -> Sequence[Any]:
        return episode[self.image_key]

    def masks(self, episode: Mapping[str, Any]) -> Sequence[Any]:
        return episode[self.mask_key]

    def append(self, episode: Mapping[str, Any], images: list, masks: list, owners: list[int]) -> dict:
        out = dict(episode)
        n = len(self.masks(episode))
        out[self.image_key] = _extend(episode[self.image_key], images)
        out[self.mask_key] = _extend(episode[self.mask_key], masks)
        for key, value in episode.items():
            if key in (self.image_key, self.mask_key) or not key.startswith(self.per_shot_prefix):
                continue
            if hasattr(value, "__len__") and not isinstance(value, (str, bytes)) and len(value) == n:
                out[key] = _extend(value, [value[j] for j in owners])
        return out


@dataclass(frozen=True)
class TupleFormat:
    """Tuple/list episodes with support images at `images_at` and masks at `masks_at`."""

    images_at: int = 2
    masks_at: int = 3

    def images(self, episode: Sequence[Any]) -> Sequence[Any]:
        return episode[self.images_at]

    def masks(self, episode: Sequence[Any]) -> Sequence[Any]:
        return episode[self.masks_at]

    def append(self, episode: Sequence[Any], images: list, masks: list, owners: list[int]) -> Any:
        out = list(episode)
        out[self.images_at] = _extend(episode[self.images_at], images)
        out[self.masks_at] = _extend(episode[self.masks_at], masks)
        return tuple(out) if isinstance(episode, tuple) else out


def default_format(episode: Any) -> EpisodeFormat:
    if isinstance(episode, Mapping):
        return DictFormat()
    if isinstance(episode, (tuple, list)):
        return TupleFormat()
    raise TypeError(
        f"cannot tell where a {type(episode).__name__} episode keeps its supports; "
        "pass episode_format=DictFormat(...) or TupleFormat(...) (or your own EpisodeFormat)"
    )


class AuxShotDataset(Dataset):
    """Wrap an FSS dataset so every episode gets K auxiliary shots per support, after the real ones.

    Args:
        base: the trainer's dataset (anything with `__getitem__` and `__len__`).
        index: an `AuxIndex` over a difaug run.
        k: aux shots per support (≤ the run's X; the first k by aux_index unless `choose="random"`).
        key_fn: episode → `[(support image path or sample_id, class_id), …]`, one per real support,
            in support order. class_id is the support mask's value for the episode's class.
        episode_format: `DictFormat`, `TupleFormat` or your own; default: guessed per episode.
        image_form: "rgb", "pil" or "cv2": how an aux image is decoded (see the module docstring;
            "pil"/"cv2" leave the resize to the trainer's transform).
        image_transform: aux image → what the episode holds. Default: `to_tensor` for "rgb" (after
            difaug's resize to the mask), the base dataset's `.transform` for "pil"/"cv2".
        shot_transform: see the module docstring; when given, `image_transform` is not used.
        missing: "error" (default) raises when a support has fewer than k aux images; "support"
            uses the real support image and mask instead, as the DifFSS BAM loader does, and
            counts it in `self.fallbacks` (per process).
        choose: "first" (deterministic) or "random" (k of the X: with `seed`, the same k for the
            same episode index; without, from the `random` module, which DataLoader seeds per worker).
        seed: see `choose`.

    Attributes the wrapper does not have are read from `base` (HSNet's `AverageMeter(dataset)`
    reads `dataset.benchmark` and `dataset.class_ids`; trainers read `.shot`, `.split`, …).
    """

    def __init__(
        self,
        base: Any,
        index: AuxIndex,
        k: int,
        key_fn: KeyFn,
        *,
        episode_format: EpisodeFormat | None = None,
        image_form: str = "rgb",
        image_transform: ImageTransform | None = None,
        shot_transform: ShotTransform | None = None,
        missing: str = "error",
        choose: str = "first",
        seed: int | str | None = None,
    ) -> None:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing={missing!r} is not one of: {', '.join(MISSING_POLICIES)}")
        if choose not in ("first", "random"):
            raise ValueError(f"choose={choose!r} is not one of: first, random")
        if index.num_aux and k > index.num_aux:
            raise ValueError(f"k={k} but the run has only {index.num_aux} aux images per support")
        check_form(image_form)
        self.base = base
        self.index = index
        self.k = k
        self.key_fn = key_fn
        self.episode_format = episode_format
        self.image_form = image_form
        self.image_transform = _image_transform(base, image_form, image_transform, shot_transform)
        self.shot_transform = shot_transform
        self.missing = missing
        self.choose = choose
        self.seed = seed
        self.fallbacks = 0

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails. While unpickling (DataLoader workers) `base` is not
        # set yet: looking it up through `self.base` would recurse, so read the instance dict.
        base = self.__dict__.get("base")
        if base is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")
        return getattr(base, name)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        episode = self.base[i]
        fmt = self.episode_format or default_format(episode)
        keys = list(self.key_fn(episode))
        masks = fmt.masks(episode)
        if len(keys) != len(masks):
            raise ValueError(
                f"episode {i}: key_fn gave {len(keys)} support keys but the episode has {len(masks)} "
                "support masks; key_fn must return one (image path or sample_id, class_id) per support"
            )
        images_out: list[Any] = []
        masks_out: list[Any] = []
        owners: list[int] = []
        for j, (key, class_id) in enumerate(keys):
            seed = None if self.seed is None else f"{self.seed}:{i}:{j}"
            for image, mask in self._shots(episode, fmt, j, str(key), int(class_id), seed):
                images_out.append(image)
                masks_out.append(mask)
                owners.append(j)
        return fmt.append(episode, images_out, masks_out, owners)

    def _shots(
        self, episode: Any, fmt: EpisodeFormat, j: int, key: str, class_id: int, seed: str | None
    ) -> list[tuple[Any, Any]]:
        if self.k == 0:
            return []
        try:
            sid = self.index.sample_id(key, class_id)
            have = self.index.aux_indices(sid)
        except AuxKeyError:
            sid, have = "", []
        if len(have) < self.k:
            if self.missing == "error":
                raise AuxKeyError(
                    f"support {key!r} (class {class_id}) has {len(have)} aux images in "
                    f"{self.index.run_dir}, fewer than k={self.k}; see `difaug inspect` for why (or "
                    "min_drift_iou left them out), or pass missing='support' to fall back to the real "
                    "support (as DifFSS BAM does)"
                )
            self.fallbacks += self.k
            return [(fmt.images(episode)[j], fmt.masks(episode)[j])] * self.k
        datas = self.index.aux_bytes(sid, k=self.k, choose=self.choose, seed=seed)
        auxes = [decode_as(d, self.image_form) for d in datas]
        if self.shot_transform is not None:
            mask = binary_mask(imageio.load_mask(self.index.info(sid).mask), class_id)
            return [self.shot_transform(a, mask.copy()) for a in auxes]
        mask_j = fmt.masks(episode)[j]
        h, w = _hw(mask_j)
        if self.image_form == "rgb":
            return [(self.image_transform(imageio.resize(a, (w, h))), mask_j) for a in auxes]
        shots = [(self.image_transform(a), mask_j) for a in auxes]
        for image, _ in shots:
            if _hw(image) != (h, w):
                raise ValueError(
                    f"support {key!r}: image_transform gave an aux image of {_hw(image)}, its support mask "
                    f"is {(h, w)}; with image_form={self.image_form!r} pass the trainer's support transform "
                    "(HSNet: dataset.transform), which resizes to the episode's size"
                )
        return shots


def _image_transform(
    base: Any, form: str, given: ImageTransform | None, shot_transform: ShotTransform | None
) -> ImageTransform:
    """The transform an aux image goes through: the one given, else `to_tensor` after difaug's
    resize ("rgb"), else the base dataset's own support transform (HSNet's `.transform`)."""
    if given is not None:
        return given
    if form == "rgb":
        return to_tensor
    own = getattr(base, "transform", None)
    if shot_transform is None and not callable(own):
        raise ValueError(
            f"image_form={form!r} needs the trainer's support transform: pass image_transform=… "
            f"({type(base).__name__} has no callable .transform)"
        )
    return own if callable(own) else to_tensor
