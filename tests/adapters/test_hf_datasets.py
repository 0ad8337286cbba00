"""A run's shards load with Hugging Face `datasets` and decode both image columns as PIL images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _runs import PASCAL_SPECS, make_run
from PIL import Image


def test_load_dataset_decodes_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    datasets = pytest.importorskip("datasets")
    run = make_run(tmp_path, PASCAL_SPECS[:3], num_aux=2, shard_size=2)  # two shards
    ds = datasets.load_dataset(
        "parquet",
        data_files=str(run.run_dir / "shards" / "*.parquet"),
        split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert ds.num_rows == 3 * 2
    assert type(ds.features["aux_image"]).__name__ == "Image"
    assert type(ds.features["condition_image"]).__name__ == "Image"
    for row in ds:
        assert isinstance(row["aux_image"], Image.Image) and isinstance(row["condition_image"], Image.Image)
        assert row["aux_image"].size == (row["width"], row["height"])
        want = run.aux[row["sample_id"]][row["aux_index"]]
        np.testing.assert_array_equal(np.asarray(row["aux_image"].convert("RGB")), want)
        np.testing.assert_array_equal(np.asarray(row["condition_image"]), run.conditions[row["sample_id"]])
