"""The `seg` condition: ADE20K colour maps, the class lookup order, the counted fallback."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
from _conditions import inputs, sample, synthetic

from difaug.conditions import Condition, ConditionInput, make_condition
from difaug.conditions.seg import FALLBACK_COLOUR, SegCondition, ade_index_for
from difaug.core.classes import ade_palette, class_table
from difaug.core.geometry import working_size


def _expected_seg(mask: np.ndarray, class_id: int, colour, resolution: int) -> np.ndarray:
    """The palette lookup restated: colour the class, palette[0] elsewhere, nearest resize."""
    h, w = mask.shape
    full = np.empty((h, w, 3), np.uint8)
    full[:] = (120, 120, 120)
    full[mask == class_id] = colour
    ws = working_size(w, h, resolution)
    return cv2.resize(full, ws, interpolation=cv2.INTER_NEAREST)


def test_seg_equals_palette_lookup() -> None:
    batch = inputs([(300, 200), (200, 300), (64, 64)], class_id=1)  # pascal 1 = airplane
    cond = make_condition("seg", resolution=256)
    out = cond(batch)
    colour = ade_palette()[class_table("pascal")[1].ade_index]
    for item, got in zip(batch, out, strict=True):
        expected = _expected_seg(item.mask, 1, colour, 256)
        assert got.dtype == np.uint8
        assert np.array_equal(got, expected)
        # exactly two colours: the class colour and the background; the 255 border is background
        assert {tuple(c) for c in got.reshape(-1, 3)} == {tuple(colour), (120, 120, 120)}
    assert cond.fallbacks == Counter()
    assert isinstance(cond, Condition)


def test_seg_class_lookup_order() -> None:
    # pascal/coco: by class id, even when the manifest spells the name differently
    assert ade_index_for("pascal", 1, "aeroplane") == class_table("pascal")[1].ade_index
    assert ade_index_for("coco", 1, "person") == class_table("coco")[1].ade_index
    # fss1000: masks are binary (class_id 255 or 1), so the name decides
    taxi = next(i for i in class_table("fss1000").values() if i.class_name == "taxi")
    assert ade_index_for("fss1000", 255, "taxi") == taxi.ade_index
    assert ade_index_for("fss1000", 1, "taxi") == taxi.ade_index  # id 1 is "fountain" in the table
    # folder / demo / unknown datasets: by name over all tables and the ADE names
    assert ade_index_for("folder", 255, "Traffic_Light") == ade_index_for("coco", 10, "traffic light")
    assert ade_index_for("", 1, "wall") == 0
    assert ade_index_for("demo", 1, "no such class zzz") is None


def test_seg_unknown_class_falls_back_and_is_counted() -> None:
    image, mask = synthetic(96, 80, class_id=255)
    mask[mask == 255] = 0  # redraw fg as 255 on a binary mask
    mask[20:40, 20:50] = 255
    items = [
        ConditionInput(sample("u1", 255, "flux capacitor", "folder", 1), image, mask),
        ConditionInput(sample("u2", 255, "flux capacitor", "folder", 2), image, mask),
        ConditionInput(sample("k", 255, "dog", "folder", 3), image, mask),
    ]
    cond = SegCondition(resolution=128)
    out = cond(items)
    assert cond.fallbacks == Counter({"flux capacitor": 2})
    assert not (ade_palette() == np.array(FALLBACK_COLOUR)).all(axis=1).any()
    assert np.array_equal(out[0], _expected_seg(mask, 255, FALLBACK_COLOUR, 128))
    dog = ade_palette()[ade_index_for("folder", 255, "dog")]
    assert np.array_equal(out[2], _expected_seg(mask, 255, dog, 128))


def test_seg_odd_inputs() -> None:
    image, mask = synthetic(40, 30)  # tiny: enlarged to the working size
    cond = SegCondition(resolution=128)
    rgba = np.dstack([image, np.full(image.shape[:2], 200, np.uint8)])
    grey = image[:, :, 0]
    sixteen = image[:, :, 0].astype(np.uint16) * 257
    for img in (rgba, grey, sixteen, image):
        (out,) = cond([ConditionInput(sample(), img, mask)])
        assert out.shape == (128, 192, 3)
        assert np.array_equal(out, _expected_seg(mask, 1, ade_palette()[90], 128))
    big_mask = np.zeros((2000, 3000), np.uint8)
    big_mask[500:1500, 1000:2000] = 1
    (out,) = cond([ConditionInput(sample(), np.zeros((2000, 3000, 3), np.uint8), big_mask)])
    assert out.shape == (128, 192, 3)
    assert (out[64, 96] == ade_palette()[90]).all() and (out[0, 0] == 120).all()
