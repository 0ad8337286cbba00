"""DiffSeg (Tian et al., "Diffuse, Attend, and Segment", CVPR 2024) on a diffusers UNet, and the
drift score of an auxiliary image built on it.

DiffSeg segments any image with no training from Stable Diffusion's self-attention:

1. *Capture.* One UNet forward pass of the VAE-encoded image (no noise added, timestep 300,
   the empty prompt), with an attention processor on every self-attention module (`attn1`) that
   computes the attention probabilities in chunks of query rows and adds their mean over heads to
   one running sum per token resolution. No layer's full per-head map (4096×4096×heads at 64×64
   tokens) is ever held; the layer's output is still SDPA's, and every other attention keeps its
   own processor (`difaug.diffusion.attention_capture`).
2. *Aggregation* (the reference's `aggregate_weights`): per resolution, the mean over its layers;
   each map upsampled bilinearly to the highest grid, renormalised to sum 1, tiled over the query
   positions, weighted by its resolution's side over the sum of the sides.
3. *Iterative attention merging* (`mask_merge`): anchors on a 16×16 grid each gather the maps
   within a symmetric-KL threshold; then twice more, greedily, proposals within the threshold are
   averaged.
4. *Non-maximum suppression* (`generate_masks`): the merged maps upsampled bilinearly to the
   UNet's input size (SD1.5: ×8); each pixel takes the index of the largest map.

Reference: google/diffseg, `diffseg/segmentor.py` (algorithm), `third_party/keras-cv/
diffusion_model.py` (which attention maps, their per-resolution mean), `third_party/keras_cv/
stable_diffusion.py` (the single pass on the clean latent), `benchmarks.ipynb` (parameters of the
published COCO-Stuff-27 result). Deliberate differences, for images and models other than
512×512 on SD: an image is resized to the model's native short side (SD1.5: 512) with its aspect
kept, so the grids may be rectangular (every formula is applied per axis); the maps are aggregated
on the highest captured grid (SD1.5: 64×64, the reference's), anchors are at most one per grid
cell, and the NMS upsamples to the UNet's input size, then the labels are resized (nearest) to the
image's own size. The reference computes the first merge's KL in float16 to fit a GPU; here it is
float32 by default (float64 in the exactness test), as a matrix product form of the same sum; the
later merges' means are one matrix product of 0/1 weights each (same groups; the sums' order
differs only in the last float32 bit). The optional K-means refinement (`REFINEMENT`) is off, as
in the reference's benchmark.

Speed: the pass is ~4 % of a generated image's FLOPs (`benchmarks/diffseg_cost.py`), and what
follows it stays on the device, with no work per proposal or per pixel on the host. A batch of
images (`DiffSeg.drift_scores`: one generate batch in the job, one `difaug score` batch) is scored
together: one VAE encode and one UNet pass per image size, then aggregation, each merge and the NMS
as batched tensor operations over the images (`merge_batch`, `suppress_batch`; proposals padded to
the batch's largest count, the counts kept on the host), so a batch costs 3 device→host copies
whatever its size (each merge's closeness matrices, the labels), not 3 per image. Each group's mean
is one matrix product and the labels are renumbered on the device. An image's labels do not
depend on its batch mates beyond the UNet pass's batched-kernel rounding (tests state the bound).
For a compiled generator the pass itself is compiled (`CompiledPass`, static shapes, batches
padded to the generator's, the generator's compile cache); eager otherwise and for `difaug score`.
`DiffSeg(half_probabilities=True)` computes the captured attention probabilities in float16 with
float32 sums (opt-in, not a job setting, until its label changes are measured on real weights).

Zero-shot evaluation against ground-truth masks (`difaug segment`) is `difaug.diffusion.segment_eval`.
The published quality (COCO-Stuff-27 mIoU 43.6 with real SD weights) was not reproduced here: this
environment has no real weights. Tests check the implementation against a numpy restatement of
the reference on fixed attention tensors.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from difaug.core.classes import IGNORE_VALUE  # mask value that is neither object nor background
from difaug.diffusion.attention_capture import (
    QUERY_CHUNK,
    AttentionSink,
    CaptureSelfAttention,
    CompiledPass,
    self_attention_names,
)

if TYPE_CHECKING:
    import torch

# ---- the reference's parameters (google/diffseg), each named once --------------------------------
# benchmarks.ipynb: `KL_THRESHOLD = [1.1]*3` ("1.1 for CoCo-Stuff and 0.9 for Cityscapes"); its
# length is the number of merging iterations (segmentor.generate_masks).
KL_THRESHOLDS: tuple[float, ...] = (1.1, 1.1, 1.1)
# benchmarks.ipynb / diffseg.ipynb: `NUM_POINTS = 16`, a 16×16 anchor grid (generate_sampling_grid).
ANCHOR_GRID = 16
# The reference segments 512×512 images, SD's native size (UNet `sample_size` 64 × VAE factor 8),
# whose highest self-attention maps are 64×64: images are resized to the model's native short side
# (`DiffSeg.input_size`).
# both notebooks: `model.text_to_image(..., latent=latent, timestep=300)`.
TIMESTEP = 300
# benchmarks.ipynb passes prompt None: the unconditional context, i.e. the tokenised empty prompt.
PROMPT = ""
# Aggregation weights: `get_weight_rato`, sqrt(tokens) = the map's side, over the sum of the sides.
# Per resolution, the maps of its layers are averaged first (diffusion_model.py: `temp/5` over the
# five 64/32/16 layers, the single 8×8 mid-block layer as is).

# ---- difaug's own choices -------------------------------------------------------------------------
# A segment counts as "the object" when more than this share of its area lies inside the mask.
MOSTLY_INSIDE = 0.5
# Merged maps upsampled per chunk in the NMS (each chunk is chunk × image H × W floats).
NMS_CHUNK = 16


# ----------------------------------------------------------------------------- the algorithm


def anchor_axis(length: int, points: int = ANCHOR_GRID) -> np.ndarray:
    """`generate_sampling_grid` on one axis of `length` latent positions (reference: 64 → 1, 5, …,
    61). At most one anchor per position when the latent is shorter than the grid."""
    points = min(points, length)
    if points == 1:
        return np.array([(length - 1) // 2])
    segment = (length - 1) // (points - 1)
    total = segment * (points - 1)
    start = (length - 1 - total) // 2
    return np.linspace(start, total + start, points).astype(int)


def anchor_indices(grid_hw: tuple[int, int], points: int = ANCHOR_GRID) -> np.ndarray:
    """Flat query indices of the anchors, in the reference's order (grid rows outer)."""
    h, w = grid_hw
    rows, cols = np.meshgrid(anchor_axis(h, points), anchor_axis(w, points), indexing="ij")
    return (rows * w + cols).reshape(-1)


def aggregate(maps: Mapping[int, torch.Tensor], grid_hw: tuple[int, int]) -> torch.Tensor:
    """The reference's `aggregate_weights` for a batch: per-resolution maps `{N: (B, N, N)}` (mean
    over heads and layers) → `(B, H·W, H·W)` on the `grid_hw` grid (the highest resolution; rows =
    query positions, columns = key positions). Works in place on the map already at that size."""
    import torch.nn.functional as F

    h, w = grid_hw
    sink = AttentionSink(grid_hw)
    grids = {n: sink.grid(n) for n in maps}
    sides = {n: math.sqrt(n) for n in maps}
    denom = sum(sides.values())
    first = next(iter(maps.values()))
    batch = first.shape[0]
    out: torch.Tensor | None = None
    if h * w in maps:  # ratio 1: no upsampling, no tiling; normalise in place
        out = maps[h * w]
        out /= out.sum(-1, keepdim=True)
        out *= sides[h * w] / denom
    else:
        out = first.new_zeros((batch, h * w, h * w))
    for n in sorted(maps, reverse=True):
        if n == h * w:
            continue
        gh, gw = grids[n]
        ratio = h // gh
        up = F.interpolate(
            maps[n].reshape(batch * n, 1, gh, gw), size=(h, w), mode="bilinear", align_corners=False
        ).reshape(batch, n, h * w)
        up = up / up.sum(-1, keepdim=True) * (sides[n] / denom)
        out.view(batch, gh, ratio, gw, ratio, h * w).add_(up.view(batch, gh, 1, gw, 1, h * w))
    return out


def _sym_kl(a: torch.Tensor, b: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """The reference's `KL(x, Y)` for all pairs: ½ Σ x log(x/y) + ½ Σ y log(y/x), `(len a, len b)`
    (or `(B, len a, len b)` for batches of maps `(B, ·, N)`)."""
    ent_a = (a * log_a).sum(-1)
    ent_b = (b * log_b).sum(-1)
    cross = a @ log_b.transpose(-1, -2) + (b @ log_a.transpose(-1, -2)).transpose(-1, -2)
    return 0.5 * (ent_a[..., :, None] - cross + ent_b[..., None, :])


def _log(maps: torch.Tensor) -> torch.Tensor:
    # An underflowed probability (exactly 0) would make 0·log 0 = nan: clamp to the smallest normal.
    import torch

    return maps.clamp_min(torch.finfo(maps.dtype).tiny).log()


def _to_device(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """Host data → `like`'s device and dtype; from pinned memory without blocking on CUDA, so the
    copy waits for nothing queued before it."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(array))
    if like.device.type == "cuda":
        return t.pin_memory().to(like.device, non_blocking=True).to(like.dtype)
    return t.to(like.dtype)


@dataclass
class Proposals:
    """Merged maps of a batch: `maps` `(B, K, N)`, of which image b's first `counts[b]` rows are its
    proposals (the rest are zero padding, never read). `counts` is on the host: the number of groups
    of each merge is known there (`greedy_groups`), so padding costs no synchronisation."""

    maps: torch.Tensor
    counts: list[int]

    def image(self, b: int) -> torch.Tensor:
        return self.maps[b, : self.counts[b]]


def merge(attention: torch.Tensor, grid_hw: tuple[int, int], *args: Any, **kwargs: Any) -> torch.Tensor:
    """Iterative attention merging (`mask_merge`) of one image: `(H·W, H·W)` aggregated maps →
    `(K, H·W)` proposals; the options (thresholds, points, dtype) are `merge_batch`'s."""
    return merge_batch(attention[None], grid_hw, *args, **kwargs).image(0)


def merge_batch(
    attention: torch.Tensor,
    grid_hw: tuple[int, int],
    thresholds: Sequence[float] = KL_THRESHOLDS,
    points: int = ANCHOR_GRID,
    dtype: torch.dtype | None = None,
) -> Proposals:
    """Iterative attention merging for a batch `(B, H·W, H·W)`, in `dtype` (default float32; the
    reference's first merge runs in float16): each merge is one batched product over the images and
    one device→host copy of the batch's closeness matrices; image b's proposals are those it
    would get alone (each image's rows and columns are its own: nothing mixes across the batch)."""
    proposals = Proposals(anchor_proposals(attention, grid_hw, thresholds[0], points, dtype), [])
    proposals.counts = [proposals.maps.shape[1]] * proposals.maps.shape[0]
    for threshold in thresholds[1:]:
        proposals = regroup_batch(proposals, threshold)
    return proposals


def anchor_proposals(
    attention: torch.Tensor,
    grid_hw: tuple[int, int],
    threshold: float,
    points: int = ANCHOR_GRID,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The first merge: each anchor's proposal is the mean of the maps within `threshold` of it.
    `(N, N)` → `(A, N)`, or a batch `(B, N, N)` → `(B, A, N)`."""
    import torch

    maps = attention.to(dtype or torch.float32)
    log_maps = _log(maps)
    anchors = torch.as_tensor(anchor_indices(grid_hw, points), device=maps.device)
    near = _sym_kl(maps[..., anchors, :], maps, log_maps[..., anchors, :], log_maps) < threshold
    near = near.to(maps.dtype)
    return (near @ maps) / near.sum(-1, keepdim=True)


def regroup(proposals: torch.Tensor, threshold: float) -> torch.Tensor:
    """A later merge of one image's `(K, N)` proposals (`regroup_batch` of a batch of one)."""
    return regroup_batch(Proposals(proposals[None], [len(proposals)]), threshold).image(0)


def regroup_batch(proposals: Proposals, threshold: float) -> Proposals:
    """A later merge: greedily, each proposal not yet taken gathers those within `threshold`
    (`greedy_groups`), and each group is replaced by its members' mean.

    One device→host copy for the batch (the closeness matrices) and one host→device copy (the
    group-membership matrices, padded to the batch's largest group count with zero rows): the
    means are one batched product of 0/1 weights, then a division by the member counts, instead
    of one gather and one mean per group. The products are exact (×1, ×0); only the summation
    order differs from a per-group sum (float32 rounding, far below the reference's float16 first
    merge)."""
    maps, counts = proposals.maps, proposals.counts
    log_p = _log(maps)
    close = (_sym_kl(maps, maps, log_p, log_p) < threshold).cpu().numpy()
    groups = [greedy_groups(close[b, :n, :n]) for b, n in enumerate(counts)]
    members = np.zeros((len(counts), max(len(g) for g in groups), maps.shape[1]), dtype=np.float32)
    for b, image_groups in enumerate(groups):
        rows = np.repeat(np.arange(len(image_groups)), [len(g) for g in image_groups])
        members[b, rows, np.concatenate(image_groups)] = 1
    sizes = np.maximum(members.sum(-1, keepdims=True), 1)  # padding rows: 0 / 1
    weights = _to_device(members, maps)
    return Proposals((weights @ maps) / _to_device(sizes, maps), [len(g) for g in groups])


def greedy_groups(close: np.ndarray) -> list[np.ndarray]:
    """The reference's greedy grouping over a boolean closeness matrix: in index order, each
    proposal not yet in a group opens one with every proposal close to it (members of earlier
    groups included, as in `mask_merge`)."""
    taken = np.zeros(len(close), dtype=bool)
    groups = []
    for i in range(len(close)):
        if taken[i]:
            continue
        members = np.flatnonzero(close[i])
        taken[i] = True
        taken[members] = True
        groups.append(members)
    return groups


def suppress(proposals: torch.Tensor, grid_hw: tuple[int, int], scale: int) -> np.ndarray:
    """Non-maximum suppression of one image's `(K, H·W)` proposals (`suppress_batch`)."""
    return suppress_batch(Proposals(proposals[None], [len(proposals)]), grid_hw, scale)[0]


def suppress_batch(proposals: Proposals, grid_hw: tuple[int, int], scale: int) -> list[np.ndarray]:
    """Non-maximum suppression (`generate_masks`) for a batch: proposals upsampled bilinearly by
    `scale`, each pixel labelled with its largest proposal (first on ties); padding rows are set
    below any probability, so they never win. Labels are renumbered 0..n-1 in order of their
    proposal index. One device→host copy for the batch; `(H·scale, W·scale)` int32 per image."""
    import torch
    import torch.nn.functional as F

    h, w = grid_hw
    maps, counts = proposals.maps, proposals.counts
    batch, k = maps.shape[:2]
    padding = np.arange(k)[None, :] >= np.asarray(counts)[:, None]
    if padding.any():
        maps = maps.masked_fill(_to_device(padding, maps).bool()[..., None], -1.0)
    maps = maps.reshape(batch, k, h, w)
    chunk = max(1, NMS_CHUNK // batch)
    best_val = best_idx = None
    for start in range(0, k, chunk):
        up = F.interpolate(
            maps[:, start : start + chunk], scale_factor=scale, mode="bilinear", align_corners=False
        )
        val, idx = up.max(1)
        idx = idx + start
        if best_val is None:
            best_val, best_idx = val, idx
        else:
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx, best_idx)
    assert best_idx is not None
    # Renumbering on the device (a proposal's new label = how many present proposals precede
    # it, as `np.unique(..., return_inverse=True)` numbers them): one int32 copy to the host, no
    # sort of the pixels there. scatter_, not bincount: CUDA's bincount reads its range back.
    flat = best_idx.reshape(batch, -1)
    present = flat.new_zeros((batch, k), dtype=torch.bool).scatter_(1, flat, True)
    renumber = present.cumsum(1).sub_(1).to(torch.int32)
    labels = renumber.gather(1, flat).reshape(best_idx.shape).cpu().numpy()
    return list(labels)


def segment_maps(
    maps: Mapping[int, torch.Tensor],
    grid_hw: tuple[int, int],
    scale: int,
    thresholds: Sequence[float] = KL_THRESHOLDS,
    points: int = ANCHOR_GRID,
    dtype: torch.dtype | None = None,
) -> list[np.ndarray]:
    """Per-resolution attention `{N: (B, N, N)}` → one label map per image (steps 2–4), aggregated
    on `grid_hw` (the highest resolution, as the reference's 64×64) and upsampled by `scale`;
    merging and NMS batched over the images (`merge_batch`, `suppress_batch`)."""
    attention = aggregate(maps, grid_hw)
    return suppress_batch(merge_batch(attention, grid_hw, thresholds, points, dtype), grid_hw, scale)


# ----------------------------------------------------------------------------- on a diffusers pipe


class DiffSeg:
    """DiffSeg on a loaded Stable Diffusion pipeline's UNet and VAE (any diffusers layout).

    Built once per process next to the generator (`for_generator`); `segment` runs one UNet pass
    per batch with the capture processors on `attn1`, and restores the previous processors after."""

    def __init__(
        self,
        pipe: Any,
        *,
        thresholds: Sequence[float] = KL_THRESHOLDS,
        points: int = ANCHOR_GRID,
        chunk: int = QUERY_CHUNK,
        half_probabilities: bool = False,
        compiled: CompiledPass | None = None,
    ) -> None:
        self.pipe = pipe
        # A compiled UNet is run eagerly for the capture (its graph has SDPA baked in).
        self.unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
        self.vae = pipe.vae
        self.scale = int(pipe.vae_scale_factor)
        self.thresholds = tuple(thresholds)
        self.points = points
        self.chunk = chunk
        # Opt-in (`CaptureSelfAttention`): float16 attention probabilities, float32 sums.
        self.half_probabilities = half_probabilities
        # The UNet pass compiled (`CompiledPass`; None: eager, processors swapped per call).
        self.compiled = compiled
        self._context: torch.Tensor | None = None

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) the UNet sees: short side = the model's native size, UNet `sample_size` × VAE
        factor (SD1.5: 64 × 8 = 512, the reference's input), aspect kept, sides rounded to `multiple`."""
        side, m = int(self.unet.config.sample_size) * self.scale, self.multiple
        k = side / min(width, height)
        return max(m, round(width * k / m) * m), max(m, round(height * k / m) * m)

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (`difaug.diffusion.loading.size_multiple`)."""
        from difaug.diffusion.loading import size_multiple

        return size_multiple(self.pipe)

    def context(self) -> torch.Tensor:
        """Text embeddings of `PROMPT`, computed once."""
        from difaug.diffusion.loading import encode_alone

        if self._context is None:
            self._context = encode_alone(self.pipe, PROMPT)
        return self._context

    def latents(self, images: np.ndarray) -> torch.Tensor:
        """`B×H×W×3` uint8 → the VAE posterior's mean × scaling factor (the reference's encoder)."""
        import torch

        from difaug.diffusion.loading import execution_device

        device = execution_device(self.pipe)
        # uint8 to the device first (a quarter of float32's bytes), converted there.
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
        x = (x / 127.5 - 1.0).to(self.vae.dtype)
        with torch.no_grad():
            mean = self.vae.encode(x).latent_dist.mean
        return mean * self.vae.config.scaling_factor

    def attention(self, images: np.ndarray) -> tuple[dict[int, torch.Tensor], tuple[int, int]]:
        """One UNet pass of `images` (one size) → per-resolution self-attention `{N: (B, N, N)}`."""
        import torch

        h, w = images.shape[1:3]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"image size {w}×{h} is not a multiple of {self.multiple}, which the UNet needs")
        latents = self.latents(images).to(self.unet.dtype)
        latent_hw = (int(latents.shape[2]), int(latents.shape[3]))
        if self.compiled is not None and self.compiled.usable:
            timestep = torch.tensor(TIMESTEP, device=latents.device)
            maps = self.compiled(latents, timestep, self.context().to(self.unet.dtype))
            if maps is not None:  # None: it failed and was switched off; the eager pass below
                return maps, latent_hw
        sink = AttentionSink(latent_hw)
        before = self.unet.attn_processors
        capture = CaptureSelfAttention(sink, self.chunk, torch.float16 if self.half_probabilities else None)
        self.unet.set_attn_processor(
            {
                name: capture if name in set(self_attention_names(self.unet)) else proc
                for name, proc in before.items()
            }
        )
        try:
            context = self.context().to(self.unet.dtype).expand(len(latents), -1, -1)
            timestep = torch.tensor(TIMESTEP, device=latents.device)
            with torch.no_grad():
                self.unet(latents, timestep, encoder_hidden_states=context, return_dict=False)
        finally:
            self.unet.set_attn_processor(before)
        return sink.mean_maps(), latent_hw

    def segment(self, images: np.ndarray) -> list[np.ndarray]:
        """`B×H×W×3` uint8 (one size, multiples of `multiple`) → label maps `H×W` int32."""
        maps, latent_hw = self.attention(images)
        grid_hw = AttentionSink(latent_hw).grid(max(maps))
        scale = images.shape[1] // grid_hw[0]
        return segment_maps(maps, grid_hw, scale, self.thresholds, self.points)

    def segment_any(self, images: Sequence[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
        """Images of any sizes → label maps at each image's own size. Each image is resized to
        `input_size`, segmented in batches of one size, and its labels resized back (nearest)."""
        from difaug.core import imageio

        out: list[np.ndarray | None] = [None] * len(images)
        sizes = [self.input_size(img.shape[1], img.shape[0]) for img in images]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):
            by_size.setdefault(size, []).append(i)
        for size, idx in by_size.items():
            for j in range(0, len(idx), batch_size):
                part = idx[j : j + batch_size]
                batch = np.stack([imageio.resize(images[i], size) for i in part])
                for i, labels in zip(part, self.segment(batch), strict=True):
                    h, w = images[i].shape[:2]
                    out[i] = imageio.resize(labels, (w, h), nearest=True)
        return [x for x in out if x is not None]

    def drift_scores(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        class_ids: Sequence[int],
    ) -> list[DriftScore]:
        """The drift score of each aux image (each at its support mask's size) against its mask's
        class: the one scoring function of the job (a generate batch) and of `difaug score`, batched
        over `images` (one UNet pass per image size); a score does not depend on its batch mates."""
        return [e.score for e in self.explain(images, masks, class_ids)]

    def explain(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        class_ids: Sequence[int],
    ) -> list[DriftExplanation]:
        """`drift_scores` with what each score was computed from: the label map and which
        segments counted as the object (`difaug inspect --explain` draws them)."""
        labels = self.segment_any(images, batch_size=max(1, len(images)))
        return [explain_drift(lab, m, c) for lab, m, c in zip(labels, masks, class_ids, strict=True)]


# ----------------------------------------------------------------------------- the drift score


@dataclass(frozen=True)
class DriftScore:
    iou: float | None  # None when the mask has no valid pixel
    segments: int

    def columns(self) -> dict[str, Any]:
        """The shard columns (`shards.SCORE_COLUMNS`)."""
        return {"drift_iou": self.iou, "drift_segments": self.segments}


def inside_segments(labels: np.ndarray, mask: np.ndarray, class_id: int) -> np.ndarray:
    """Per segment id, whether it lies mostly (> `MOSTLY_INSIDE` of its valid area) inside the
    mask's `class_id` pixels; pixels with value `IGNORE_VALUE` count for neither side."""
    if labels.shape != mask.shape:
        raise ValueError(f"label map {labels.shape} and mask {mask.shape} differ in size")
    valid = mask != IGNORE_VALUE
    inside = (mask == class_id) & valid
    n = int(labels.max()) + 1 if labels.size else 0
    area = np.bincount(labels[valid].ravel(), minlength=n)
    area_in = np.bincount(labels[inside].ravel(), minlength=n)
    return area_in > MOSTLY_INSIDE * area


def drift_score(labels: np.ndarray, mask: np.ndarray, class_id: int) -> DriftScore:
    """IoU between the mask's `class_id` pixels and the segments mostly inside them (ignore 255)."""
    return explain_drift(labels, mask, class_id).score


@dataclass(frozen=True)
class DriftExplanation:
    """A drift score with what it was computed from, at the mask's size."""

    labels: np.ndarray  # H×W segment ids (0..n-1)
    inside: np.ndarray  # (n,) bool: the segment counted as the object (`inside_segments`)
    score: DriftScore

    @property
    def counted(self) -> int:
        """Segments counted as the object."""
        return int(self.inside.sum())


def explain_drift(labels: np.ndarray, mask: np.ndarray, class_id: int) -> DriftExplanation:
    """The drift score of one label map against its mask, with the segments it counted."""
    inside = inside_segments(labels, mask, class_id)
    valid = mask != IGNORE_VALUE
    target = (mask == class_id) & valid
    pred = inside[labels] & valid
    union = int((pred | target).sum())
    segments = int(np.count_nonzero(np.bincount(labels.ravel())))
    iou = None if union == 0 else float((pred & target).sum()) / union
    return DriftExplanation(labels, inside, DriftScore(iou, segments))


_SCORERS: weakref.WeakKeyDictionary[Any, DiffSeg] = weakref.WeakKeyDictionary()


def load(cfg: Any, runtime: Any) -> DiffSeg:
    """DiffSeg on a job's base model loaded alone, without the ControlNet a generator would load
    (`loading.load_scoring_pipeline`: same weights, dtype, device and preparation as the
    generator's, so the scores equal those `for_generator` gives at shard time). `cfg`: the
    `JobConfig` (its model and LCM-LoRA), `runtime`: the `RuntimeConfig` (device, dtype)."""
    from difaug.diffusion.loading import load_scoring_pipeline
    from difaug.diffusion.specs import ModelSpec

    pipe = load_scoring_pipeline(
        ModelSpec.from_config(cfg), device=runtime.device, dtype=runtime.dtype, lcm_lora=cfg.lcm_lora
    )
    return DiffSeg(pipe)


def for_generator(generator: Any, cfg: Any) -> DiffSeg | None:
    """The process's DiffSeg for a loaded generator (built once, from its pipeline), or None when
    the job does not score (`score: none`) or the generator has no diffusers pipeline (stand-ins)."""
    if getattr(cfg, "score", "none") != "diffseg" or getattr(generator, "pipe", None) is None:
        return None
    scorer = _SCORERS.get(generator)
    if scorer is None:
        from difaug.diffusion.speed import is_compiled

        # A compiled generator gets a compiled scoring pass: same static-shape policy (batches padded
        # to the generator's), same cache folder, warm-up and warnings reported as the generator's.
        compiled = CompiledPass(generator.pipe, generator) if is_compiled(generator.pipe) else None
        scorer = _SCORERS[generator] = DiffSeg(generator.pipe, compiled=compiled)
    return scorer
