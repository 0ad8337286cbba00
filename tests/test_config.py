"""`JobConfig.validate` / `RuntimeConfig.validate` check every value they hold, with a message
naming the key and what to do; `difaug.core.device` is the one device/dtype resolver."""

from __future__ import annotations

from pathlib import Path

import pytest

from difaug.core import device as devices
from difaug.core.config import (
    COMPILE_MODES,
    ConfigError,
    JobConfig,
    RuntimeConfig,
    check_prompt_template,
    resolve_job,
)


@pytest.mark.parametrize(
    ("template", "named"),
    [
        ("{class_name} {style}", "{style}"),
        ("{} photo of {class_name}", "{}"),
        ("{class_name.upper}", "{class_name.upper}"),
        ("{class_name[0]}", "{class_name[0]}"),
        ("a photo of {class_name", "not a valid template"),
        ("a photo }", "not a valid template"),
        ("a photo of a cat", "must contain {class_name}"),
    ],
)
def test_prompt_template_refused_with_the_reason(template: str, named: str) -> None:
    with pytest.raises(ConfigError, match="prompt_template") as err:
        JobConfig(prompt_template=template).validate()
    assert named in str(err.value)


@pytest.mark.parametrize(
    "template", ["{class_name}", "{{literal}} {class_name}", "{class_name!r}, {class_name:>5}"]
)
def test_prompt_template_accepted(template: str) -> None:
    check_prompt_template(template)
    assert template.format(class_name="cat")  # what generate does with it


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"resolution": 100}, "resolution"),
        ({"resolution": 0}, "resolution"),
        ({"detect_resolution": 0}, "detect_resolution"),
        ({"num_aux": 0}, "num_aux"),
        ({"jpeg_quality": 101}, "jpeg_quality"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"controlnet_scale": "1"}, "controlnet_scale"),
        ({"seed": -1}, "seed"),
        ({"condition": "depth"}, "--condition"),
        ({"condition_style": "x"}, "--condition-style"),
        ({"scheduler": "x"}, "--scheduler"),
    ],
)
def test_job_config_refuses(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.lstrip("-")) as err:
        JobConfig(**changes).validate()
    assert key in str(err.value)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"compile": True, "compile_mode": "foo"}, "--compile-mode"),
        ({"compile_mode": "foo"}, "--compile-mode"),  # wrong even while compile is off
        ({"device": "gpu"}, "device='gpu'"),
        ({"device": "cuda:x"}, "device='cuda:x'"),
        ({"dtype": "fp8"}, "--dtype"),
        ({"threads_per_worker": 0}, "threads_per_worker"),
        ({"workers": 0}, "workers"),
        ({"batch_size": 0}, "batch_size"),
        ({"retries": -1}, "retries"),
        ({"compile": True, "offload": True}, "compile and offload"),
        ({"max_side": 0}, "max_side"),
        ({"max_aspect": 0.5}, "max_aspect"),
        ({"max_pixels": 0}, "max_pixels"),
        ({"cluster": "moon"}, "--cluster"),
    ],
)
def test_runtime_config_refuses(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        RuntimeConfig(**changes).validate()
    assert key in str(err.value)


def test_defaults_and_every_compile_mode_validate() -> None:
    JobConfig().validate()
    for mode in COMPILE_MODES:
        RuntimeConfig(compile=True, compile_mode=mode, device="cuda:1", dtype="bfloat16").validate()


def test_resolve_job_refuses_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="compile_mode"):
        resolve_job(manifest="m.csv", out=str(tmp_path / "out"), compile=True, compile_mode="foo")
    assert not (tmp_path / "out").exists()


def test_device_resolution_is_one_function_everywhere() -> None:
    from difaug.conditions import hed
    from difaug.diffusion import models

    assert models.resolve_device is devices.resolve_device
    assert models.resolve_dtype is devices.resolve_dtype
    assert str(hed.resolve_device("cpu")) == devices.resolve_device("cpu") == "cpu"
    assert devices.resolve_dtype("auto", "cpu") == "float32"
    assert devices.resolve_dtype("fp16", "cuda") == "float16"
    with pytest.raises(ConfigError, match="float16 is not supported on CPU"):
        devices.resolve_dtype("float16", "cpu")
    # the HED network may run in half precision on the CPU (small; its overflow fallback is tested)
    assert str(hed.resolve_dtype("fp16", hed.resolve_device("cpu"))) == "torch.float16"


def test_condition_names_defined_once() -> None:
    from difaug import conditions
    from difaug.cli import conditions as cli_conditions
    from difaug.core import config

    assert conditions.CONDITION_NAMES is config.CONDITIONS
    assert conditions.STYLES is config.CONDITION_STYLES
    assert cli_conditions.CONDITION_CHOICES is config.CONDITIONS
