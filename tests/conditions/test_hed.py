"""HED weights, loader and the `hed` / `scribble` conditions against controlnet-aux and the DifFSS steps.

Tolerances (measured on CPU, fp32, random weights): our batched edge maps equal controlnet-aux's
per-image `HEDdetector` maps except on a few pixels (≈2e-5 of them) that differ by 1 uint8 level,
from ~1e-7 float differences between torch's and OpenCV's bilinear upsampling landing on a
truncation boundary. The tests allow max |diff| ≤ 1 on ≤ 0.1% of pixels. The masking and threshold
steps are checked pixel for pixel on the same edge maps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _conditions import (
    RES,
    compare,
    controlnet_aux,
    hed_weights,
    inputs,
    restated_diffss_hed,
    restated_diffss_scribble,
    sample,
    synthetic,
)

from difaug.conditions import ConditionInput, make_condition
from difaug.conditions.hed import (
    HED_FILENAME,
    HedWeightsError,
    clear_cache,
    hed_maps,
    hed_network_class,
    load_hed_network,
    make_random_hed_weights,
)
from difaug.conditions.resize import resize_image

__all__ = ["hed_weights"]  # the fixture, imported from the helpers

MAX_LEVELS = 1
MAX_FRACTION = 1e-3
SIZES = [(300, 200), (200, 300), (256, 256), (320, 240)]  # three working sizes at RES


def _reference(net: torch.nn.Module, image: np.ndarray, scribble: bool = False) -> np.ndarray:
    """controlnet-aux's own per-image path (numpy/cv2), detect resolution = image resolution = RES."""
    detector = controlnet_aux("hed").HEDdetector(net)
    return detector(image, detect_resolution=RES, image_resolution=RES, output_type="np", scribble=scribble)


@pytest.fixture(scope="module")
def batch() -> list[ConditionInput]:
    return inputs(SIZES)


@pytest.fixture(scope="module")
def reference_edges(hed_weights: Path, batch: list[ConditionInput]) -> list[np.ndarray]:
    """controlnet-aux HEDdetector maps (H×W×3) for `batch`, computed once per module."""
    net = load_hed_network(str(hed_weights), "cpu", None)
    return [_reference(net, item.image) for item in batch]


def test_random_weights_are_stored_like_the_real_file(hed_weights: Path, tmp_path: Path) -> None:
    path = hed_weights / HED_FILENAME
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert list(state) == list(hed_network_class()().state_dict())  # no prefix, same order
    assert all(v.dtype == torch.float16 for v in state.values())
    # controlnet-aux's own loader accepts the folder, as it would the downloaded Annotators repo
    detector = controlnet_aux("hed").HEDdetector.from_pretrained(str(hed_weights))
    assert (
        sum(p.numel() for p in detector.netNetwork.parameters()) == 14_716_168
    )  # 29.4 MB in fp16, as the real file
    # deterministic per seed, different across seeds
    again = make_random_hed_weights(tmp_path / "again" / HED_FILENAME, seed=0)
    other = make_random_hed_weights(tmp_path / "other", seed=1)
    assert again.read_bytes() == path.read_bytes()
    assert other.name == HED_FILENAME and other.read_bytes() != path.read_bytes()


def test_loader_accepts_folder_and_file_and_caches(hed_weights: Path) -> None:
    clear_cache()
    a = load_hed_network(str(hed_weights), "cpu", None)
    assert load_hed_network(str(hed_weights), "cpu", "float32") is not None
    assert load_hed_network(str(hed_weights), "cpu", None) is a
    b = load_hed_network(str(hed_weights / HED_FILENAME), "cpu", "fp32")
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    assert next(a.parameters()).dtype == torch.float32
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_missing_weights_offline_give_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    clear_cache()
    with pytest.raises(HedWeightsError) as info:
        load_hed_network("lllyasviel/Annotators", "cpu", None)
    message = str(info.value)
    assert "ControlNetHED.pth" in message and "lllyasviel/Annotators" in message
    assert "--hed-weights" in message and "huggingface-cli download" in message
    assert "HF_HUB_OFFLINE" in message
    assert info.value.__cause__ is None  # one error, not a chain of hub tracebacks
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(HedWeightsError, match=r"empty-folder/ControlNetHED\.pth"):
        load_hed_network(str(tmp_path / "empty-folder"), "cpu", None)
    with pytest.raises(HedWeightsError, match=r"no-such\.pth"):
        load_hed_network(str(tmp_path / "no-such.pth"), "cpu", None)


def test_unreadable_weights_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage" / HED_FILENAME
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(HedWeightsError, match="cannot read HED weights"):
        load_hed_network(str(garbage), "cpu", None)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(HedWeightsError, match="not a ControlNetHED_Apache2 state dict"):
        load_hed_network(str(wrong), "cpu", None)


def test_random_network_gives_structured_edges(hed_weights: Path) -> None:
    """Guards the masking tests against a vacuous constant edge map."""
    net = load_hed_network(str(hed_weights), "cpu", None)
    image, _ = synthetic(256, 256)
    (edge,) = hed_maps(net, [image])
    assert edge.std() > 20 and len(np.unique(edge)) > 50
    assert (edge > 127).mean() > 0.05 and (edge <= 127).mean() > 0.05  # both sides of the threshold


def test_hed_edges_match_controlnet_aux_per_image(
    hed_weights: Path, batch: list[ConditionInput], reference_edges: list[np.ndarray]
) -> None:
    cond = make_condition(
        "hed", style="upstream", resolution=RES, detect_resolution=RES, hed_weights=str(hed_weights)
    )
    ours = cond(batch)
    worst, fraction = 0, 0.0
    for got, ref in zip(ours, reference_edges, strict=True):
        levels, frac = compare(got, ref)
        worst, fraction = max(worst, levels), max(fraction, frac)
    assert worst <= MAX_LEVELS and fraction <= MAX_FRACTION, (worst, fraction)


def test_detect_resolution_is_fixed_and_the_map_resized_to_the_working_size(hed_weights: Path) -> None:
    # DifFSS/ControlNet: HED at detect resolution, then cv2 INTER_LINEAR to the working size.
    # 192×128 keeps controlnet-aux's own size arithmetic equal to ours at both resolutions.
    (item,) = inputs([(192, 128)])
    net = load_hed_network(str(hed_weights), "cpu", None)
    detector = controlnet_aux("hed").HEDdetector(net)
    ref = detector(item.image, detect_resolution=128, image_resolution=64, output_type="np")
    cond = make_condition(
        "hed", style="upstream", resolution=64, detect_resolution=128, hed_weights=str(hed_weights)
    )
    (got,) = cond([item])
    assert got.shape == ref.shape == (64, 128, 3)  # 96 rounds (half to even) to 128
    levels, fraction = compare(got, ref)
    assert levels <= MAX_LEVELS and fraction <= MAX_FRACTION, (levels, fraction)
    # …and it is not the map HED makes when it runs at the working size itself.
    small = make_condition(
        "hed", style="upstream", resolution=64, detect_resolution=64, hed_weights=str(hed_weights)
    )
    assert compare(small([item])[0], ref)[1] > 0.01


def test_diffss_hed_and_scribble_follow_the_diffss_steps(
    hed_weights: Path, batch: list[ConditionInput], reference_edges: list[np.ndarray]
) -> None:
    hed = make_condition("hed", resolution=RES, detect_resolution=RES, hed_weights=str(hed_weights))
    scribble = make_condition("scribble", resolution=RES, detect_resolution=RES, hed_weights=str(hed_weights))
    edges = hed.edges(batch)
    got_hed, got_scribble = hed(batch), scribble(batch)
    for item, edge, h, s, ref_edge in zip(batch, edges, got_hed, got_scribble, reference_edges, strict=True):
        edge3 = np.repeat(edge[:, :, None], 3, axis=2)
        # (a) masking and threshold, pixel for pixel on the same edge map
        expected_hed = restated_diffss_hed(edge3, item.mask, item.sample.class_id)
        assert np.array_equal(h, expected_hed)
        assert np.array_equal(s, restated_diffss_scribble(expected_hed))
        # background edges vanish outside the dilated foreground, where the raw map had edges
        keep = restated_diffss_hed(np.ones_like(edge3), item.mask, item.sample.class_id)[:, :, 0]
        assert h.shape == (*edge.shape, 3) and not h[keep == 0].any() and h[keep == 1].any()
        assert (edge[keep == 0] > 0).mean() > 0.5 and 0.05 < keep.mean() < 0.8
        assert set(np.unique(s)) <= {0, 255} and (s == 255).any()
        # (b) the whole chain against the restatement on controlnet-aux's per-image HED map
        ref_hed = restated_diffss_hed(ref_edge, item.mask, item.sample.class_id)
        levels, frac = compare(h, ref_hed)
        assert levels <= MAX_LEVELS and frac <= MAX_FRACTION, (levels, frac)
        _, frac = compare(s, restated_diffss_scribble(ref_hed))
        assert frac <= MAX_FRACTION


def test_upstream_scribble_matches_controlnet_aux(hed_weights: Path, batch: list[ConditionInput]) -> None:
    cond = make_condition(
        "scribble", style="upstream", resolution=RES, detect_resolution=RES, hed_weights=str(hed_weights)
    )
    for item, got in zip(batch[:2], cond(batch[:2]), strict=True):
        ref = _reference(cond.net, item.image, scribble=True)
        assert got.shape == ref.shape and set(np.unique(got)) <= {0, 255}
        # nms and the blur can spread a 1-level edge difference over a few pixels
        _, frac = compare(got, ref)
        assert frac <= 5e-3, frac
        # unmasked: strokes also outside the foreground
        fg = resize_image(np.repeat(item.mask[:, :, None], 3, axis=2), RES)[:, :, 0] == 1
        assert (got[~fg] == 255).any()


def test_batched_mixed_sizes_equal_per_image(hed_weights: Path) -> None:
    net = load_hed_network(str(hed_weights), "cpu", None)
    images = [resize_image(item.image, RES) for item in inputs([*SIZES, (300, 200), (128, 128)])]
    batched = hed_maps(net, images, batch_size=3)
    for img, got in zip(images, batched, strict=True):
        (alone,) = hed_maps(net, [img])
        levels, frac = compare(got, alone)
        assert levels <= MAX_LEVELS and frac <= MAX_FRACTION, (levels, frac)


def test_hed_odd_inputs(hed_weights: Path) -> None:
    cond = make_condition("hed", resolution=128, detect_resolution=128, hed_weights=str(hed_weights))
    image, mask = synthetic(48, 40)  # tiny: < 64 px
    big, big_mask = synthetic(3000, 2000)
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])  # opaque: same as RGB
    items = [
        ConditionInput(sample("rgb"), image, mask),
        ConditionInput(sample("grey"), image[:, :, 1], mask),
        ConditionInput(sample("rgba"), rgba, mask),
        ConditionInput(sample("16bit"), image.astype(np.uint16) * 257, mask),
        ConditionInput(sample("big"), big, big_mask),
    ]
    out = cond(items)
    assert [o.shape for o in out] == [(128, 128, 3)] * 4 + [(128, 192, 3)]  # working sizes
    assert np.array_equal(out[0], out[2]) and np.array_equal(out[0], out[3])  # 257·x → x exactly
    assert not np.array_equal(out[0], out[1])  # grey really was grey
    assert all(o.dtype == np.uint8 and (o > 0).any() for o in out)


def test_foreground_value_255_and_ignore_borders(hed_weights: Path) -> None:
    """Binary masks whose foreground is 255; and VOC masks where 255 is an ignore border."""
    cond = make_condition("hed", resolution=128, detect_resolution=128, hed_weights=str(hed_weights))
    image, mask = synthetic(160, 128)
    binary = np.where(mask == 1, 255, 0).astype(np.uint8)
    fg255, fg1 = cond(
        [
            ConditionInput(sample("a", class_id=255, dataset="folder"), image, binary),
            ConditionInput(sample("b", class_id=1), image, mask),
        ]
    )
    assert np.array_equal(fg255, fg1)  # the 255 ring around class 1 is not foreground for class 1
    nothing = cond([ConditionInput(sample("c", class_id=7), image, mask)])[0]
    assert not nothing.any()  # a class absent from the mask leaves no edge at all


def test_half_precision_overflow_is_redone_in_fp32(hed_weights: Path, tmp_path: Path) -> None:
    """fp16 (the CUDA default) can overflow; the batch is redone in fp32, never returned as NaN."""
    state = torch.load(hed_weights / HED_FILENAME, weights_only=True)
    loud = {k: v.float() * 8 if k.endswith("weight") else v.float() for k, v in state.items()}
    torch.save(loud, tmp_path / HED_FILENAME)
    half = make_condition(
        "hed",
        style="upstream",
        resolution=64,
        detect_resolution=64,
        hed_weights=str(tmp_path),
        dtype="float16",
    )
    full = make_condition(
        "hed",
        style="upstream",
        resolution=64,
        detect_resolution=64,
        hed_weights=str(tmp_path),
        dtype="float32",
    )
    assert half.dtype == torch.float16
    item = inputs([(64, 64)])
    with pytest.warns(RuntimeWarning, match="overflowed"):
        got = half(item)
    assert np.array_equal(got[0], full(item)[0])


def test_condition_pickles_as_settings(hed_weights: Path) -> None:
    import pickle

    cond = make_condition("scribble", resolution=64, detect_resolution=64, hed_weights=str(hed_weights))
    blob = pickle.dumps(cond)
    assert len(blob) < 10_000  # no weights inside
    clone = pickle.loads(blob)
    item = inputs([(64, 80)])
    assert clone.name == "scribble" and np.array_equal(clone(item)[0], cond(item)[0])
