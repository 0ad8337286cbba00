"""Named settings a job can start from (`--preset NAME`, `preset:` in YAML).

A preset fills the keys the user did not set: defaults < preset < YAML keys < CLI flags, so a key
given in the file or on the command line next to the preset wins (`resolve_job` applies it in one
call). The plan records the preset's name and every resolved value, so a resume sees the same job.

`diffss-reference` is the sampler of the DifFSS reference code (TrinitialChan/ControlNet4FSS
`FSSpregenerate.py`: `ddim_steps = 2`, `scale = 9`, `eta = 0`, `strength = 1`), run with
diffusers' `DDIMScheduler` configured as Stable Diffusion 1.5's (`SCHEDULER_CONFIG`): `leading`
spacing with `steps_offset 1` gives the timesteps 501, 1 of the reference's uniform
discretisation (`make_ddim_timesteps`: 0, 500, then +1), and `set_alpha_to_one False` makes the
last step's previous ᾱ `alphas_cumprod[0]`, the reference's `ddim_alphas_prev[0]`. eta 0 is the
diffusers pipeline's default (difaug never passes another).
"""

from __future__ import annotations

from typing import Any

from difaug.core.errors import DifaugError

PRESETS: dict[str, dict[str, Any]] = {
    "diffss-reference": {
        "scheduler": "ddim",
        "steps": 2,
        "guidance_scale": 9.0,
        "controlnet_scale": 1.0,
    },
}

# The scheduler settings each preset pins, whatever the base model's scheduler config says (they
# apply while the job's scheduler is still the preset's: `--scheduler` given next to it drops them).
SCHEDULER_CONFIG: dict[str, dict[str, Any]] = {
    "diffss-reference": {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "set_alpha_to_one": False,
        "clip_sample": False,
        "prediction_type": "epsilon",
        "thresholding": False,
    },
}


class PresetError(DifaugError, ValueError):
    """An unknown preset name; the message lists the known ones."""


def check_preset(name: str) -> None:
    """Refuse a preset name difaug does not know ("" = no preset)."""
    if name and name not in PRESETS:
        raise PresetError(
            f"preset={name!r} is not a preset; known: {', '.join(PRESETS)} "
            "(set --preset or `preset:` in the config file to one of them, or leave it out)"
        )


def apply_preset(values: dict[str, Any]) -> dict[str, Any]:
    """`values` (YAML keys and CLI flags already merged) with the preset's keys filled in where
    `values` has none: defaults < preset < YAML < flags."""
    name = values.get("preset") or ""
    check_preset(name)
    return {**PRESETS.get(name, {}), **values}


def scheduler_config(preset: str, scheduler: str) -> dict[str, Any]:
    """The scheduler settings `preset` pins when the job's `scheduler` is the preset's own, else {}."""
    check_preset(preset)
    if not preset or PRESETS[preset].get("scheduler") != scheduler:
        return {}
    return dict(SCHEDULER_CONFIG.get(preset, {}))
