"""`difaug.core.geometry.working_size`: ControlNet's working size, short side at the resolution and
both sides multiples of 64 (that it equals controlnet-aux's `resize_image` pixel for pixel is
tested beside the resize, `tests/conditions/test_resize.py`)."""

from __future__ import annotations

import pytest

from difaug.core.geometry import DEFAULT_RESOLUTION, ConditionError, working_size

SIZES = [(500, 375), (375, 500), (512, 512), (1, 1), (33, 47), (3000, 2000), (77, 1200), (640, 427)]


@pytest.mark.parametrize("resolution", [64, 256, 512, 768])
def test_sides_are_multiples_of_64_and_the_short_side_is_the_resolution(resolution: int) -> None:
    for width, height in SIZES:
        w, h = working_size(width, height, resolution)
        assert w % 64 == 0 and h % 64 == 0 and min(w, h) >= 64, (width, height)
        short = w if width <= height else h
        assert abs(short - resolution) <= 32, (width, height, short)  # rounded to the nearest 64
        assert (w >= h) == (width >= height) or w == h  # orientation kept


def test_examples() -> None:
    assert DEFAULT_RESOLUTION == 512
    assert working_size(500, 375) == (704, 512)  # VOC's typical landscape image
    assert working_size(375, 500) == (512, 704)
    assert working_size(224, 224) == (512, 512)  # FSS-1000
    assert working_size(20, 30, 500) == (512, 768)  # 500 rounds to 512, 750 to 768
    assert working_size(10, 1000, 64) == (64, 6400)


def test_half_way_sides_round_to_even_as_numpy_does() -> None:
    # 96 / 64 = 1.5 → 2 (even), 160 / 64 = 2.5 → 2 (even): Python's round would agree, int() would not
    assert working_size(96, 64, 64) == (128, 64)
    assert working_size(160, 64, 64) == (128, 64)


@pytest.mark.parametrize(("width", "height", "resolution"), [(0, 10, 512), (10, -1, 512), (10, 10, 32)])
def test_empty_sizes_and_tiny_resolutions_are_refused(width: int, height: int, resolution: int) -> None:
    with pytest.raises(ConditionError):
        working_size(width, height, resolution)
