"""`--preset` / `preset:`: defaults < preset < YAML keys < CLI flags; the plan's config records the
resolved values and the preset's name; an unknown name is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from difaug.core.config import JobConfig, resolve_job
from difaug.core.presets import PRESETS, PresetError, apply_preset, scheduler_config

REFERENCE = {"scheduler": "ddim", "steps": 2, "guidance_scale": 9.0, "controlnet_scale": 1.0}


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _picked(cfg: JobConfig) -> dict:
    return {k: getattr(cfg, k) for k in REFERENCE}


def test_the_reference_preset_is_the_diffss_sampler() -> None:
    assert PRESETS["diffss-reference"] == REFERENCE
    # The defaults differ from it in every key but the ControlNet scale: the preset does something.
    assert _picked(JobConfig()) == {
        "scheduler": "unipc",
        "steps": 20,
        "guidance_scale": 9.0,
        "controlnet_scale": 1.0,
    }


def test_flag_preset_sets_its_keys_and_is_recorded() -> None:
    job = resolve_job(None, manifest="m.csv", out="out", preset="diffss-reference")
    assert _picked(job.config) == REFERENCE
    assert job.config.preset == "diffss-reference"
    # The name is part of the job: a run with and without it are two jobs.
    plain = resolve_job(None, manifest="m.csv", out="out", scheduler="ddim", steps=2)
    assert plain.config.fingerprint() != job.config.fingerprint()


def test_yaml_preset_and_yaml_keys_override_it(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "manifest: m.csv\nout: out\npreset: diffss-reference\nsteps: 4\n")
    job = resolve_job(path)
    assert _picked(job.config) == REFERENCE | {"steps": 4}  # YAML key > preset
    assert job.config.preset == "diffss-reference"


def test_flags_override_the_preset_wherever_it_was_set(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "manifest: m.csv\nout: out\npreset: diffss-reference\nguidance_scale: 7.0\n")
    job = resolve_job(path, steps=3, guidance_scale=5.0)
    assert _picked(job.config) == REFERENCE | {"steps": 3, "guidance_scale": 5.0}
    # A flag preset over a YAML file: the file's keys still win over the preset's.
    path = _yaml(tmp_path, "manifest: m.csv\nout: out\nsteps: 6\n")
    job = resolve_job(path, preset="diffss-reference", scheduler="euler")
    assert _picked(job.config) == REFERENCE | {"steps": 6, "scheduler": "euler"}


def test_flags_not_given_leave_the_preset() -> None:
    job = resolve_job(None, manifest="m.csv", out="out", preset="diffss-reference", steps=None)
    assert job.config.steps == 2


def test_unknown_preset_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PresetError, match=r"preset='fast' is not a preset; known: diffss-reference") as err:
        resolve_job(None, manifest="m.csv", out="out", preset="fast")
    assert err.value.exit_code == 2
    path = _yaml(tmp_path, "manifest: m.csv\nout: out\npreset: DifFSS\n")
    with pytest.raises(PresetError, match="DifFSS"):
        resolve_job(path)


def test_apply_preset_fills_only_missing_keys() -> None:
    assert apply_preset({"steps": 9}) == {"steps": 9}
    assert apply_preset({"preset": "diffss-reference", "steps": 9}) == REFERENCE | {
        "preset": "diffss-reference",
        "steps": 9,
    }


def test_scheduler_config_is_sd15_ddim_only_for_the_presets_scheduler() -> None:
    pinned = scheduler_config("diffss-reference", "ddim")
    assert pinned["steps_offset"] == 1 and pinned["set_alpha_to_one"] is False
    assert pinned["timestep_spacing"] == "leading" and pinned["clip_sample"] is False
    assert scheduler_config("diffss-reference", "unipc") == {}  # --scheduler given next to the preset
    assert scheduler_config("", "ddim") == {}


def test_pinned_ddim_config_gives_the_reference_timesteps() -> None:
    """The reference's `make_ddim_timesteps('uniform', 2, 1000)` = [0, 500] + 1, sampled from the
    top; its last `ddim_alphas_prev` = alphas_cumprod[0]."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config({}, **scheduler_config("diffss-reference", "ddim"))
    sched.set_timesteps(2)
    assert sched.timesteps.tolist() == [501, 1]
    assert float(sched.final_alpha_cumprod) == float(sched.alphas_cumprod[0])
