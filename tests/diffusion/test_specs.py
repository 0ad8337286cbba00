"""Model specs: the hub defaults, bundles and per-part overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from difaug.cli import app
from difaug.core.config import DEFAULT_BASE_MODEL, JobConfig
from difaug.diffusion.specs import BUNDLE_INDEX, ModelLoadError, ModelSpec


def test_spec_defaults_are_the_hub_models() -> None:
    spec = ModelSpec.from_config(JobConfig(condition="seg"))
    assert spec == ModelSpec(DEFAULT_BASE_MODEL, "lllyasviel/sd-controlnet-seg", "lllyasviel/Annotators")


def test_spec_from_bundle_and_overrides(tiny_models: Path, tmp_path: Path) -> None:
    spec = ModelSpec.from_config(JobConfig(model=str(tiny_models), condition="scribble"))
    assert spec.base == str((tiny_models / "stable-diffusion-v1-5").resolve())
    assert spec.controlnet == str((tiny_models / "sd-controlnet-scribble").resolve())
    assert spec.hed_weights == str((tiny_models / "Annotators").resolve())

    over = ModelSpec.from_config(
        JobConfig(model=str(tiny_models), controlnet="me/my-cn", hed_weights="me/hed", base_model="me/base")
    )
    assert over == ModelSpec("me/base", "me/my-cn", "me/hed")

    # A `model` that is not a bundle is the base model.
    plain = ModelSpec.from_config(JobConfig(model="someone/sd15-finetune"))
    assert plain.base == "someone/sd15-finetune"
    assert plain.controlnet == "lllyasviel/sd-controlnet-hed"

    # A bundle without a ControlNet for the condition says so.
    (tmp_path / BUNDLE_INDEX).write_text(json.dumps({"base_model": "sd", "controlnets": {"hed": "cn"}}))
    with pytest.raises(ModelLoadError, match="no ControlNet for condition 'seg'"):
        ModelSpec.from_config(JobConfig(model=str(tmp_path), condition="seg"))


def test_cli_models_show(tiny_models: Path) -> None:
    result = CliRunner().invoke(app, ["models", "show", "--model", str(tiny_models), "--condition", "seg"])
    assert result.exit_code == 0, result.output
    assert "sd-controlnet-seg" in result.output
    assert "Annotators" in result.output


def test_a_bundle_index_of_random_bytes_is_one_line_and_permanent(tmp_path: Path) -> None:
    (tmp_path / BUNDLE_INDEX).write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ModelLoadError) as err:
        ModelSpec.from_config(JobConfig(model=str(tmp_path)))
    message = str(err.value)
    assert "not UTF-8 text at byte 0" in message and "\n" not in message and err.value.permanent
    # The flag survives the trip from a Dask worker back to the driver.
    import pickle

    back = pickle.loads(pickle.dumps(err.value))
    assert back.permanent and str(back) == message
