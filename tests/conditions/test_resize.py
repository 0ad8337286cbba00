"""The working-size resize and channel handling match controlnet-aux's `resize_image` and `HWC3`."""

from __future__ import annotations

import numpy as np
import pytest
from _conditions import controlnet_aux

from difaug.conditions.resize import hwc3, resize_image
from difaug.core.geometry import ConditionError, working_size

SHAPES = [(500, 375), (375, 500), (512, 512), (640, 480), (1000, 333), (33, 47), (3000, 2000), (77, 1200)]


@pytest.mark.parametrize("resolution", [512, 256, 384, 500])
def test_working_size_matches_controlnet_resize_image(resolution: int) -> None:
    cn_resize_image = controlnet_aux("util").resize_image
    for w, h in SHAPES:
        ref = cn_resize_image(np.zeros((h, w, 3), np.uint8), resolution)
        assert working_size(w, h, resolution) == (ref.shape[1], ref.shape[0]), (w, h)
        assert resize_image(np.zeros((h, w, 3), np.uint8), resolution).shape == ref.shape


def test_working_size_examples() -> None:
    assert working_size(500, 375) == (704, 512)  # VOC's typical landscape image
    assert working_size(375, 500) == (512, 704)
    assert working_size(512, 512) == (512, 512)
    assert working_size(20, 30) == (512, 768)
    assert all(v % 64 == 0 for v in working_size(3000, 2000, 256))
    with pytest.raises(ConditionError):
        working_size(0, 10)


def test_resize_and_hwc3_match_controlnet_aux() -> None:
    util = controlnet_aux("util")
    HWC3, cn_resize_image = util.HWC3, util.resize_image
    rng = np.random.default_rng(1)
    for w, h in [(300, 200), (40, 50)]:  # shrink (area) and enlarge (Lanczos)
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        assert np.array_equal(resize_image(img, 128), cn_resize_image(img, 128))
    rgba = rng.integers(0, 255, (9, 7, 4), dtype=np.uint8)
    assert np.array_equal(hwc3(rgba), HWC3(rgba))
    grey = rng.integers(0, 255, (9, 7), dtype=np.uint8)
    assert np.array_equal(hwc3(grey), HWC3(grey))
