"""Zero-shot evaluation of DiffSeg segments (`difaug segment`): the reference's Hungarian matching."""

from __future__ import annotations

import numpy as np
import pytest

from difaug.diffusion import segment_eval


def test_hungarian_matching_is_label_free_and_ignores_255():
    truth = np.array([[0, 0, 4, 4], [0, 0, 4, 4], [255, 255, 4, 4]])
    perfect = np.array([[7, 7, 2, 2], [7, 7, 2, 2], [1, 1, 2, 2]])  # any segment ids
    counts = segment_eval.MatchCounts()
    counts.add(perfect, truth)
    assert counts.miou() == 1.0 and counts.pixel_accuracy() == 1.0 and counts.classes() == 2
    one_blob = np.zeros_like(truth)  # everything one segment: it matches class 4 (6 px > 4 px)
    counts = segment_eval.MatchCounts()
    counts.add(one_blob, truth)
    # class 4: tp 6, fp 4 → IoU 0.6; class 0: nothing matched → IoU 0.
    assert counts.miou() == pytest.approx(0.3) and counts.pixel_accuracy() == pytest.approx(0.6)
