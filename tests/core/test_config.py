"""`difaug.core.config`: `JobConfig.validate` / `RuntimeConfig.validate` check every value they
hold, with a message naming the key and what to do; every key is declared once (`setting`), and its
flag, YAML key and place in the model-cache key follow from that declaration."""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest
import yaml
from _configs import CHANGED_JOB, CHANGED_RUNTIME

from difaug.core.config import (
    COMPILE_MODES,
    ConfigError,
    JobConfig,
    RuntimeConfig,
    check_prompt_template,
    cli_flag,
    load_yaml,
    model_settings,
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


# --------------------------------------------------------------------------------------------------
# One declaration per key: `setting` metadata is what the CLI flags, the model-cache key and the YAML
# keys derive from, so a new field is either declared completely or these fail.


@pytest.mark.parametrize("config", [JobConfig, RuntimeConfig])
def test_every_field_is_declared_with_setting_and_help(config: type) -> None:
    for f in fields(config):
        assert set(f.metadata) == {"help", "flag", "models"}, f"{config.__name__}.{f.name}: use setting(…)"
        help = f.metadata["help"]
        assert help.strip() and "\n" not in help, f"{config.__name__}.{f.name}: help is one line"


def test_a_value_for_every_field() -> None:
    assert set(CHANGED_JOB) == {f.name for f in fields(JobConfig)}
    assert set(CHANGED_RUNTIME) == {f.name for f in fields(RuntimeConfig)}
    for name, value in CHANGED_JOB.items():
        assert getattr(JobConfig(), name) != value, name
    for name, value in CHANGED_RUNTIME.items():
        assert getattr(RuntimeConfig(), name) != value, name


def test_a_yaml_key_for_every_field_loads(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    document = {
        "manifest": "m.csv",
        "out": str(tmp_path / "out"),
        **CHANGED_JOB,
        "execution": CHANGED_RUNTIME,
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    assert load_yaml(path) == {
        "manifest": "m.csv",
        "out": str(tmp_path / "out"),
        **CHANGED_JOB,
        **CHANGED_RUNTIME,
    }
    job = resolve_job(path)
    assert asdict(job.config) == CHANGED_JOB
    assert asdict(job.runtime) == CHANGED_RUNTIME


def test_flags_follow_the_field_metadata() -> None:
    by_name = {f.name: f for f in (*fields(JobConfig), *fields(RuntimeConfig))}
    assert cli_flag(by_name["num_aux"]) == "--num-aux"
    assert cli_flag(by_name["offload"]) == "--offload/--no-offload"
    assert cli_flag(by_name["compile"]) == "--compile/--no-compile"  # `bool | str`: a switch on the CLI
    assert cli_flag(by_name["compile_cache_dir"]) == "--compile-cache"  # a flag named apart from its key
    assert cli_flag(by_name["slurm_partition"]) == "--slurm-partition"  # YAML: `slurm: {partition: …}`
    for name in ("hed_batch", "prepare_threads", "compile_min_images"):
        assert cli_flag(by_name[name]) == "--" + name.replace("_", "-")


def test_model_settings_are_the_fields_marked_models() -> None:
    marked = {f.name for f in fields(RuntimeConfig) if f.metadata["models"]}
    assert {"device", "dtype", "batch_size", "hed_batch", "compile", "offload", "vae_batch"} <= marked
    assert dict(model_settings(RuntimeConfig())).keys() == marked
    # and only those: a setting models are not built with never forces a reload
    unmarked = {k: v for k, v in CHANGED_RUNTIME.items() if k not in marked}
    assert model_settings(replace(RuntimeConfig(), **unmarked)) == model_settings(RuntimeConfig())
    for name in marked - {"compile_cache_dir"}:  # the cache folder counts only when compiling
        changed = replace(RuntimeConfig(), **{name: CHANGED_RUNTIME[name]})
        assert model_settings(changed) != model_settings(RuntimeConfig()), name


def test_model_settings_spell_equivalent_values_once() -> None:
    assert model_settings(RuntimeConfig(compile=False)) == model_settings(RuntimeConfig(compile="off"))
    assert model_settings(RuntimeConfig(hed_batch=0, batch_size=4)) == model_settings(
        RuntimeConfig(hed_batch=4, batch_size=4)
    )
    off = RuntimeConfig(compile="off", compile_cache_dir="/a")
    assert model_settings(off) == model_settings(replace(off, compile_cache_dir="/b"))
    on = RuntimeConfig(compile="on", compile_cache_dir="/a")
    assert model_settings(on) != model_settings(replace(on, compile_cache_dir="/b"))


def test_limit_and_num_aux_bounds_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"limit must be an integer >= 0.*got -5"):
        resolve_job(manifest="m.csv", out="o", limit=-5)
    assert resolve_job(manifest="m.csv", out="o", limit=0).limit == 0
    with pytest.raises(ConfigError, match=r"num_aux=1000000000 is more than 1000"):
        resolve_job(manifest="m.csv", out="o", num_aux=1_000_000_000)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("manifest: m.csv\na: b: c\n", r"job.yaml:2:5: not valid YAML"),
        ("manifest: m.csv\nexecution: 5\n", r"job.yaml:2: `execution:` must be a mapping"),
        ("\xff\xfe bad", r"job.yaml: not UTF-8 text"),
    ],
    ids=["syntax", "execution-type", "bytes"],
)
def test_yaml_errors_name_the_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=where):
        load_yaml(path)
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_yaml(tmp_path)
