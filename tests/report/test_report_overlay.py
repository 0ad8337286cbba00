"""Why an image scored low: the drift overlay's pixels, and the lowest images explained again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _runs import make_run

from difaug.diffusion.diffseg import explain_drift
from difaug.diffusion.segment_eval import colourise
from difaug.report import data, overlay


def _picture() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 128² grey image, labels: left half 0, right top 1, right bottom 2; the mask (class 5)
    covers the left half and a sliver of segment 1, with an ignore band."""
    image = np.full((128, 128, 3), 100, np.uint8)
    labels = np.zeros((128, 128), np.int64)
    labels[:64, 64:], labels[64:, 64:] = 1, 2
    mask = np.zeros((128, 128), np.uint8)
    mask[:, :70] = 5
    mask[:, 70:72] = 255
    return image, labels, mask


def test_counted_segments_are_striped_and_the_mask_is_outlined() -> None:
    image, labels, mask = _picture()
    explanation = explain_drift(labels, mask, 5)
    assert explanation.inside.tolist() == [True, False, False] and explanation.counted == 1
    assert explanation.score.iou == pytest.approx(64 * 64 * 2 / (128 * 70))
    drawn = overlay.drift_overlay(image, explanation, mask, 5)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8

    outline = np.all(drawn == overlay.OUTLINE.astype(np.uint8), axis=-1)
    stripe = np.all(drawn == overlay.STRIPE.astype(np.uint8), axis=-1)
    # The outline runs along column 70 (the mask's right edge) and nowhere far from it.
    cols = np.nonzero(outline.any(axis=0))[0]
    assert cols.min() >= 69 and cols.max() <= 70 and outline[:, 69:71].all()
    # Stripes only on the counted segment, and on a sixth of it (period 6, width 1).
    assert stripe[labels != 0].sum() == 0
    assert stripe[labels == 0].mean() == pytest.approx(1 / 6, abs=0.01)
    # An uncounted segment away from the outline is the image tinted by its colour at 25 %.
    colour = colourise(labels)[0, 127].astype(np.float32)
    expected = np.round(100 * (1 - overlay.OUTSIDE_ALPHA) + colour * overlay.OUTSIDE_ALPHA)
    assert np.array_equal(drawn[10, 120], expected.astype(np.uint8))
    # A counted, unstriped pixel is tinted at 55 %.
    colour0 = colourise(labels)[0, 0].astype(np.float32)
    y, x = np.argwhere((labels == 0) & ~stripe & ~outline)[0]
    assert np.array_equal(drawn[y, x], np.round(100 * 0.45 + colour0 * 0.55).astype(np.uint8))


def test_overlay_refuses_sizes_that_differ() -> None:
    image, labels, mask = _picture()
    with pytest.raises(ValueError, match="differ in size"):
        overlay.drift_overlay(image[:64], explain_drift(labels, mask, 5), mask, 5)


def test_the_lowest_images_explained_again_give_their_stored_scores(
    tmp_path: Path, tiny_models: Path
) -> None:
    from difaug.core.config import JobConfig, RuntimeConfig
    from difaug.run.rescore import load_scorer, score_run

    synth = make_run(tmp_path, num_aux=2, shard_size=3, model=str(tiny_models))
    runtime = RuntimeConfig(device="cpu", dtype="float32")
    score_run(synth.run_dir, load_scorer(JobConfig(model=str(tiny_models)), runtime), batch_size=4)
    stats = data.score_stats(synth.run_dir, 4)
    explained = overlay.explain_lowest(synth.run_dir, stats, overlay.load_explainer(synth.run_dir, runtime))
    assert list(explained) == [key for key, _ in stats.lowest]
    for key, stored in stats.lowest:
        sid, _, k = key.rpartition("/")
        aux = synth.aux[sid][int(k)]
        assert explained[key].explanation.score.iou == pytest.approx(stored, abs=1e-9)
        assert explained[key].overlay.shape == aux.shape
        assert explained[key].explanation.labels.shape == aux.shape[:2]
        assert "segments counted" in explained[key].caption()
