"""Inputs of every condition: normalisation and refusal, and the options `make_condition` checks."""

from __future__ import annotations

import numpy as np
import pytest
from _conditions import sample, synthetic

from difaug.conditions import ConditionInput, make_condition, prepare_input
from difaug.conditions.resize import as_rgb8
from difaug.core.geometry import ConditionError


def test_prepare_input_normalises_and_refuses() -> None:
    image, mask = synthetic(20, 10)
    assert prepare_input(ConditionInput(sample(), image, mask)).image is image
    sixteen = np.full((10, 20), 65535, np.uint16)
    assert (prepare_input(ConditionInput(sample(), sixteen, mask)).image == 255).all()
    rgba = np.dstack([image, np.zeros((10, 20), np.uint8)])  # fully transparent → white, as HWC3
    assert (prepare_input(ConditionInput(sample(), rgba, mask)).image == 255).all()
    mask3 = np.dstack([mask, mask, mask])
    assert prepare_input(ConditionInput(sample(), image, mask3)).mask.shape == (10, 20)
    with pytest.raises(ConditionError, match=r"row 1 \(s0\).*mask shape"):
        prepare_input(ConditionInput(sample(), image, mask[:5]))
    with pytest.raises(ConditionError, match="float"):
        prepare_input(ConditionInput(sample(), image.astype(np.float32), mask))
    with pytest.raises(ValueError, match="channels"):
        as_rgb8(np.zeros((4, 4, 2), np.uint8))


def test_make_condition_rejects_bad_options() -> None:
    with pytest.raises(ConditionError, match="unknown condition 'canny'"):
        make_condition("canny")
    with pytest.raises(ConditionError, match="style"):
        make_condition("seg", style="fancy")
    with pytest.raises(ConditionError, match="resolution"):
        make_condition("seg", resolution=32)
    assert make_condition("seg", style="upstream").name == "seg"
