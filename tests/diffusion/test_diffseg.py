"""DiffSeg: exactness against a numpy restatement of the reference, capture on a real UNet, and
the drift score."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _labels import same_partition  # noqa: E402

from difaug.diffusion import attention_capture, diffseg  # noqa: E402

# ----------------------------------------------------------------------------- the reference, in numpy
# A plain restatement of google/diffseg `diffseg/segmentor.py` (DiffSeg.aggregate_weights,
# mask_merge, generate_masks; REFINEMENT off) for a square latent of side L, with the TF bilinear
# upsampling (half-pixel centres, edges clamped) written out. Float64 everywhere (the reference
# casts the first merge's KL to float16 only to fit a GPU).


def ref_grid(num_points: int, side: int) -> np.ndarray:
    segment_len = (side - 1) // (num_points - 1)
    total_len = segment_len * (num_points - 1)
    start_point = ((side - 1) - total_len) // 2
    x_new = np.linspace(start_point, total_len + start_point, num_points)
    y_new = np.linspace(start_point, total_len + start_point, num_points)
    x_new, y_new = np.meshgrid(x_new, y_new, indexing="ij")
    return np.concatenate([x_new.reshape(-1, 1), y_new.reshape(-1, 1)], axis=-1).astype(int)


def ref_upsample(x: np.ndarray, ratio: int) -> np.ndarray:
    """tf.keras UpSampling2D(interpolation='bilinear') on the last two axes."""

    def weights(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_in * ratio) + 0.5) / ratio - 0.5, 0.0)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    lo, hi, t = weights(x.shape[-2])
    x = x[..., lo, :] * (1 - t)[:, None] + x[..., hi, :] * t[:, None]
    lo, hi, t = weights(x.shape[-1])
    return x[..., lo] * (1 - t) + x[..., hi] * t


def ref_aggregate(weight_list: list[np.ndarray], side: int) -> np.ndarray:
    sizes = np.array([np.sqrt(w.shape[-2]) for w in weight_list])
    ratios = sizes / sizes.sum()
    out = np.zeros((side, side, side, side))
    for index, weights in enumerate(weight_list):
        size = int(np.sqrt(weights.shape[-1]))
        ratio = side // size
        weights = weights.mean(0).reshape(-1, size, size)
        weights = ref_upsample(weights, ratio).reshape(size, size, side, side)
        weights = weights / weights.sum((2, 3), keepdims=True)
        weights = np.repeat(np.repeat(weights, ratio, axis=0), ratio, axis=1)
        out += weights * ratios[index]
    return out


def ref_kl(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    quotient = np.log(x) - np.log(y)
    return (x * quotient).sum((-2, -1)) / 2 - (y * quotient).sum((-2, -1)) / 2


def ref_merge(attns: np.ndarray, thresholds: list[float], grid: np.ndarray, side: int) -> np.ndarray:
    n = side * side
    anchors = attns[grid[:, 0], grid[:, 1]][:, None]  # A × 1 × L × L
    flat = attns.reshape(1, n, side, side)
    kl_bin = np.concatenate(
        [ref_kl(anchors[i : i + 16], flat) < thresholds[0] for i in range(0, len(anchors), 16)]
    )
    kl_bin = kl_bin.astype(np.float64)
    merged = (kl_bin @ attns.reshape(-1, n) / kl_bin.sum(1, keepdims=True)).reshape(-1, side, side)
    for threshold in thresholds[1:]:
        matched: set[int] = set()
        new = []
        for i, anchor in enumerate(merged):
            if i in matched:
                continue
            matched.add(i)
            near = ref_kl(anchor, merged) < threshold
            matched.update(np.arange(len(merged))[near].tolist())
            new.append(merged[near].mean(0))
        merged = np.array(new)
    return merged


def ref_segment(weight_list: list[np.ndarray], side: int, scale: int, thresholds: list[float]) -> np.ndarray:
    attns = ref_aggregate(weight_list, side)
    merged = ref_merge(attns, thresholds, ref_grid(16, side), side)
    return ref_upsample(merged, scale).argmax(0)


# ----------------------------------------------------------------------------- fixed attention tensors


def structured_attention(rng: np.random.Generator, side: int, heads: int, centres: np.ndarray) -> np.ndarray:
    """Softmax self-attention `heads × N × N` of a `side×side` grid: tokens attend more to tokens
    of their own Voronoi region (`centres` in [0, 1]², shared by all resolutions), plus noise."""
    yy, xx = (np.mgrid[0:side, 0:side] + 0.5) / side
    region = np.argmin(
        (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2, -1
    ).ravel()
    same = (region[:, None] == region[None, :]).astype(np.float64)
    logits = 3.0 * same[None] + rng.normal(0, 1.0, (heads, side * side, side * side))
    logits -= logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(-1, keepdims=True)


def run_difaug(per_res: dict[int, list[np.ndarray]], side: int, scale: int) -> np.ndarray:
    """difaug's path: every layer through the capture sink chunk by chunk, as in a UNet pass."""
    sink = attention_capture.AttentionSink((side, side), dtype=torch.float64)
    for s, layers in per_res.items():
        for layer in layers:
            t = torch.from_numpy(layer)[None]
            for start in range(0, s * s, 100):
                sink.add(t[:, :, start : start + 100], start)
    return diffseg.segment_maps(sink.mean_maps(), (side, side), scale, dtype=torch.float64)[0]


def test_matches_numpy_reference_on_fixed_attention():
    side, heads, scale = 32, 4, 4  # SD: 64 (resolutions 64, 32, 16, 8), 8 heads, scale 8
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 1, (5, 2))
    sides = (32, 16, 8, 4)
    per_res = {
        s: [structured_attention(rng, s, heads, centres) for _ in range(2 if s > 4 else 1)] for s in sides
    }
    # The reference receives the per-resolution mean over layers (diffusion_model.py: Σ temp / 5).
    expected = ref_segment(
        [np.mean(per_res[s], axis=0) for s in sides], side, scale, list(diffseg.KL_THRESHOLDS)
    )
    got = run_difaug(per_res, side, scale)

    assert got.shape == expected.shape == (side * scale, side * scale)
    assert len(np.unique(expected)) >= 3, "the fixture must produce several segments"
    assert same_partition(got, expected)


def test_matches_reference_with_one_low_resolution_level():
    # A layout like the tiny UNet's: attention at one level only, below the latent's resolution.
    side, heads, scale = 16, 2, 2
    rng = np.random.default_rng(1)
    per_res = {8: [structured_attention(rng, 8, heads, rng.uniform(0, 1, (3, 2)))]}
    expected = ref_segment([per_res[8][0]], side, scale, list(diffseg.KL_THRESHOLDS))
    assert same_partition(run_difaug(per_res, side, scale), expected)


def test_merge_matches_the_references_proposals_in_float64():
    # Merging alone, on the reference's own aggregated maps: the same groups in the same order,
    # and means equal to float64 rounding (the later merges average by one matrix product of 0/1
    # weights, whose summation order differs from the reference's per-group mean).
    side, heads = 32, 4
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 1, (5, 2))
    weights = [structured_attention(rng, s, heads, centres) for s in (32, 16, 8, 4)]
    attns = ref_aggregate(weights, side)
    thresholds = list(diffseg.KL_THRESHOLDS)
    expected = ref_merge(attns, thresholds, ref_grid(16, side), side).reshape(-1, side * side)
    got = diffseg.merge(
        torch.from_numpy(attns.reshape(side * side, side * side)),
        (side, side),
        thresholds,
        dtype=torch.float64,
    ).numpy()
    assert got.shape == expected.shape and len(expected) >= 3
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


def test_greedy_groups_keep_the_references_order_and_overlaps():
    close = np.array(
        [
            [1, 1, 0, 0],
            [1, 1, 1, 0],  # taken by group 0: opens nothing, though it is close to 2
            [0, 1, 1, 1],
            [0, 0, 1, 1],  # taken by group 1
        ],
        dtype=bool,
    )
    groups = diffseg.greedy_groups(close)
    assert [g.tolist() for g in groups] == [[0, 1], [1, 2, 3]]  # 1 belongs to both, as in mask_merge
    # The same overlap from KL values: 0–1 0.046, 1–2 0.058, 2–3 0.041 are under 0.1; 0–2 0.21 is not.
    proposals = torch.tensor([[0.5, 0.5], [0.35, 0.65], [0.2, 0.8], [0.1, 0.9]], dtype=torch.float64)
    expected = torch.stack([proposals[[0, 1]].mean(0), proposals[[1, 2, 3]].mean(0)])
    torch.testing.assert_close(diffseg.regroup(proposals, 0.1), expected, rtol=1e-15, atol=0)


def test_suppress_numbers_the_winning_proposals_in_order():
    # Proposal 1 never wins: labels 0, 1 go to proposals 0, 2 (np.unique's inverse numbering).
    grid = torch.zeros(3, 2, 2)
    grid[0, :, 0] = 1.0
    grid[2, :, 1] = 1.0
    grid[1] = 0.1
    labels = diffseg.suppress(grid.reshape(3, 4), (2, 2), 2)
    assert labels.dtype == np.int32 and labels.shape == (4, 4)
    assert (labels == np.array([[0, 0, 1, 1]] * 4)).all()


def test_anchor_grid_is_the_references():
    assert (diffseg.anchor_axis(64) == np.arange(1, 62, 4)).all()
    grid = ref_grid(16, 64)
    assert (diffseg.anchor_indices((64, 64)) == grid[:, 0] * 64 + grid[:, 1]).all()


# ----------------------------------------------------------------------------- the drift score


def block_attention(side: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Hand-made self-attention (1 head): tokens inside `box` (y0, y1, x0, x1) attend to the box,
    the others to the rest, each with a little mass everywhere."""
    inside = np.zeros((side, side), bool)
    y0, y1, x0, x1 = box
    inside[y0:y1, x0:x1] = True
    inside = inside.ravel()
    same = inside[:, None] == inside[None, :]
    probs = np.where(same, 1.0, 0.01)
    return (probs / probs.sum(-1, keepdims=True))[None]


def test_drift_score_ignores_255_and_takes_segments_mostly_inside():
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
    mask = np.array([[5, 5, 5, 0], [5, 5, 255, 0], [0, 0, 0, 0], [0, 0, 0, 5]])
    # segment 0 is all inside; segment 1 has 1 of 3 valid pixels inside; segment 2 has 1 of 8.
    score = diffseg.drift_score(labels, mask, 5)
    assert score.segments == 3
    assert score.iou == pytest.approx(4 / 6)  # pred = segment 0 (4 px), target = 5 px, union 6
    assert diffseg.drift_score(labels, np.full((4, 4), 255), 5).iou is None


def test_content_inside_the_mask_scores_higher_than_moved_outside():
    side, scale = 16, 4
    mask = np.zeros((side * scale, side * scale), np.uint8)
    mask[8:32, 8:32] = 7  # the support mask: object in the top-left quarter
    scores = {}
    for where, box in {"inside": (2, 8, 2, 8), "outside": (9, 15, 9, 15)}.items():
        maps = {side * side: torch.from_numpy(block_attention(side, box).mean(0)[None])}
        labels = diffseg.segment_maps(maps, (side, side), scale)[0]
        scores[where] = diffseg.drift_score(labels, mask, 7)
    assert scores["inside"].segments == scores["outside"].segments == 2
    assert scores["inside"].iou > 0.75  # bilinear NMS softens the box edge by a latent cell
    assert scores["outside"].iou == 0.0


# ----------------------------------------------------------------------------- on the tiny UNet


@pytest.fixture(scope="module")
def test_half_probabilities_segment_like_float32_on_the_tiny_unet(tiny_pipe):
    image = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    fine = (0.001,) * 3  # the tiny model's near-uniform maps split only at low thresholds
    full = diffseg.DiffSeg(tiny_pipe, thresholds=fine).segment(image)
    half = diffseg.DiffSeg(tiny_pipe, thresholds=fine, half_probabilities=True).segment(image)
    changed = np.mean([np.mean(a != b) for a, b in zip(full, half, strict=True)])
    assert max(len(np.unique(a)) for a in full) > 1  # there is something to disagree on
    assert changed <= 0.05, f"{changed:.1%} of label pixels changed"


def test_drift_scores_any_size_on_the_tiny_unet(tiny_pipe):
    seg = diffseg.DiffSeg(tiny_pipe)
    rng = np.random.default_rng(1)
    images = [
        rng.integers(0, 256, (40, 56, 3), dtype=np.uint8),
        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
    ]
    masks = [np.zeros((40, 56), np.uint8), np.zeros((64, 64), np.uint8)]
    masks[0][10:30, 10:40] = 3
    masks[1][:, :32] = 3
    scores = seg.drift_scores(images, masks, [3, 3])
    for s in scores:
        assert 0.0 <= s.iou <= 1.0 and s.segments >= 1


# ----------------------------------------------------------------------------- batched scoring

# An image's labels and score must not depend on its batch mates. Measured on the tiny UNet (fp32,
# CPU, 6 images in one batch vs one by one), reference thresholds: 0 % of label pixels changed, max
# |Δ drift_iou| 0. The steps after the UNet pass are exactly batch-independent (0 pixels, asserted
# below at a threshold that gives the tiny model several segments); the UNet pass itself is not bit
# for bit (batched kernels: ~1e-7 on maps of ~6e-3), which can flip a KL comparison right at the
# threshold. Bounds: ≤ 1 % of pixels, |Δ drift_iou| ≤ 0.02.
BATCH_PIXEL_SHARE = 0.01
BATCH_IOU_DELTA = 0.02


def test_batched_merge_and_nms_equal_each_image_alone():
    """Images of different group counts in one batch (padding rows): each image's proposals and
    labels are those it gets alone."""
    side, scale = 16, 2
    attention = []
    for seed, regions in ((0, 3), (1, 9), (2, 5)):
        rng = np.random.default_rng(seed)
        attention.append(structured_attention(rng, side, 2, rng.random((regions, 2))).mean(0))
    batch = torch.from_numpy(np.stack(attention))
    merged = diffseg.merge_batch(batch, (side, side), dtype=torch.float64)
    assert len(set(merged.counts)) > 1, "the fixture must give the images different group counts"
    batched = diffseg.suppress_batch(merged, (side, side), scale)
    for b, one in enumerate(attention):
        alone = diffseg.merge(torch.from_numpy(one), (side, side), dtype=torch.float64)
        torch.testing.assert_close(merged.image(b), alone, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(batched[b], diffseg.suppress(alone, (side, side), scale))


def _blob_images(n: int, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images with a few flat-coloured rectangles (content DiffSeg can split) and masks of one."""
    rng = np.random.default_rng(5)
    images, masks = [], []
    for _ in range(n):
        img = np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8)
        mask = np.zeros((size, size), np.uint8)
        for k in range(3):
            y, x = rng.integers(0, size // 2, 2)
            img[y : y + size // 2, x : x + size // 2] = rng.integers(0, 256, 3)
            if k == 0:
                mask[y : y + size // 2, x : x + size // 2] = 1
        images.append(img)
        masks.append(mask)
    return images, masks


def test_batched_drift_scores_equal_one_by_one_on_the_tiny_unet(tiny_pipe):
    seg = diffseg.DiffSeg(tiny_pipe)
    images, masks = _blob_images(6, 64)
    together = seg.segment_any(images, batch_size=len(images))
    alone = [seg.segment_any([img])[0] for img in images]
    changed = sum(int((a != b).sum()) for a, b in zip(together, alone, strict=True))
    assert changed / sum(a.size for a in alone) <= BATCH_PIXEL_SHARE
    batched = seg.drift_scores(images, masks, [1] * len(images))
    single = [seg.drift_scores([img], [m], [1])[0] for img, m in zip(images, masks, strict=True)]
    for b, s in zip(batched, single, strict=True):
        assert b.iou is not None and s.iou is not None
        assert abs(b.iou - s.iou) <= BATCH_IOU_DELTA
    # Other batch mates, the same score.
    mates = seg.drift_scores([images[0], *images[3:]], [masks[0], *masks[3:]], [1] * 4)[0]
    assert mates.iou is not None and abs(mates.iou - single[0].iou) <= BATCH_IOU_DELTA


def test_post_pass_of_a_batch_equals_each_image_alone_on_the_tiny_unet(tiny_pipe):
    """Aggregation, merging and NMS of a batch = of each image alone, bit for bit, on real captured
    maps; at threshold 0.001 the tiny model's near-uniform maps split into several segments."""
    seg = diffseg.DiffSeg(tiny_pipe, thresholds=(0.001,) * 3)
    images = np.stack(_blob_images(6, 64)[0])
    alone = [seg.attention(images[i : i + 1]) for i in range(len(images))]
    latent_hw = alone[0][1]
    grid = attention_capture.AttentionSink(latent_hw).grid(max(alone[0][0]))
    scale = 64 // grid[0]
    stacked = {n: torch.cat([maps[n] for maps, _ in alone]) for n in alone[0][0]}
    batched = diffseg.segment_maps(stacked, grid, scale, seg.thresholds)
    singles = [diffseg.segment_maps(maps, grid, scale, seg.thresholds)[0] for maps, _ in alone]
    assert max(len(np.unique(x)) for x in singles) >= 3
    for b, one in zip(batched, singles, strict=True):
        np.testing.assert_array_equal(b, one)


def test_drift_scores_run_one_unet_pass_per_image_size(tiny_pipe):
    """The scoring pass is batched: one VAE encode and one UNet call per size in the batch."""
    seg = diffseg.DiffSeg(tiny_pipe)
    calls = {"unet": [], "vae": []}
    unet_forward, vae_encode = seg.unet.forward, seg.vae.encode

    def count_unet(sample, *a, **k):
        calls["unet"].append(len(sample))
        return unet_forward(sample, *a, **k)

    def count_vae(x, *a, **k):
        calls["vae"].append(len(x))
        return vae_encode(x, *a, **k)

    images, masks = _blob_images(5, 64)
    seg.unet.forward, seg.vae.encode = count_unet, count_vae
    try:
        seg.drift_scores(images, masks, [1] * 5)
    finally:
        del seg.unet.forward, seg.vae.encode
    assert calls == {"unet": [5], "vae": [5]}
