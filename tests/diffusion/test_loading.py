"""Loading: one clear error per missing weight, device and dtype, the tiny bundle loaded, the scheduler registry."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from difaug.core.config import DEFAULT_VAE_BATCH, SCHEDULERS, ConfigError, JobConfig
from difaug.core.device import resolve_device, resolve_dtype
from difaug.diffusion.loading import (
    SCHEDULER_CLASSES,
    load_pipeline,
    load_scoring_pipeline,
    make_scheduler,
)
from difaug.diffusion.specs import ModelLoadError, ModelSpec
from difaug.diffusion.speed import fuse_qkv_projections

# ---- loading errors -----------------------------------------------------------------------------


def test_missing_local_folder_gives_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = ModelSpec(base=str(tmp_path / "nope"), controlnet=str(tmp_path / "nope-cn"))
    with pytest.raises(ModelLoadError) as err:
        load_pipeline(spec, device="cpu")
    msg = str(err.value)
    assert str(tmp_path / "nope-cn") in msg and "no such folder" in msg
    assert "--model DIR" in msg and "--base-model" in msg and "--controlnet" in msg


def test_folder_without_diffusers_layout(tiny_models: Path, tmp_path: Path) -> None:
    spec = ModelSpec(base=str(tmp_path), controlnet=str(tiny_models / "sd-controlnet-hed"))
    with pytest.raises(ModelLoadError, match=r"no model_index\.json"):
        load_pipeline(spec, device="cpu")


def test_uncached_hub_id_offline(tiny_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = ModelSpec(
        base="difaug-tests/not-a-cached-model", controlnet=str(tiny_models / "sd-controlnet-hed")
    )
    with pytest.raises(ModelLoadError) as err:
        load_pipeline(spec, device="cpu")
    msg = str(err.value)
    assert "'difaug-tests/not-a-cached-model'" in msg
    assert "HF_HUB_OFFLINE=1" in msg and "--base-model" in msg
    assert "Traceback" not in msg and len(msg.splitlines()) == 1


# ---- device and dtype ---------------------------------------------------------------------------


def test_device_and_dtype_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ConfigError, match="float16 is not supported on CPU"):
        resolve_dtype("float16", "cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="not one of"):
        resolve_dtype("float8", "cpu")


def test_device_and_dtype_with_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_dtype("auto", "cuda") == "float16"
    assert resolve_dtype("auto", "cuda:1") == "float16"
    assert resolve_dtype("bfloat16", "cuda") == "bfloat16"
    assert resolve_dtype("float32", "cuda") == "float32"


def test_compile_and_offload_refused_together(tiny_models: Path) -> None:
    spec = ModelSpec.from_config(JobConfig(model=str(tiny_models)))
    with pytest.raises(ConfigError, match="compile and offload"):
        load_pipeline(spec, device="cpu", compile=True, offload=True)


# ---- loading the tiny bundle --------------------------------------------------------------------


def test_load_pipeline_tiny(tiny_models: Path) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    spec = ModelSpec.from_config(JobConfig(model=str(tiny_models), condition="seg"))
    pipe = load_pipeline(spec, device="cpu", dtype="auto", scheduler="ddim")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.unet.dtype == torch.float32 and pipe.controlnet.dtype == torch.float32
    assert pipe.safety_checker is None
    # Batched VAE decode in chunks of vae_batch replaces diffusers' one-at-a-time slicing.
    assert not pipe.vae.use_slicing and pipe.vae._difaug_decode == (DEFAULT_VAE_BATCH, False)
    # SDPA attention stays in place in both networks.
    for net in (pipe.unet, pipe.controlnet):
        assert {type(p) for p in net.attn_processors.values()} == {AttnProcessor2_0}
    # The ControlNet came from the seg folder, not another condition's.
    assert pipe.controlnet.config._name_or_path.endswith("sd-controlnet-seg")


def test_scoring_pipeline_loads_the_base_model_alone(tiny_models: Path, tmp_path: Path) -> None:
    """`difaug score` / `segment`: the base model's UNet, VAE and text encoder, the ControlNet not
    even read (a spec whose ControlNet folder is missing loads), the generator's weights and dtype."""
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    full = ModelSpec.from_config(JobConfig(model=str(tiny_models)))
    spec = ModelSpec(base=full.base, controlnet=str(tmp_path / "no-such-controlnet"))
    with pytest.raises(ModelLoadError, match="no-such-controlnet"):
        load_pipeline(spec, device="cpu")
    pipe = load_scoring_pipeline(spec, device="cpu", dtype="auto")
    assert type(pipe).__name__ == "StableDiffusionPipeline" and "controlnet" not in pipe.components
    assert pipe.unet.dtype == torch.float32 and pipe.safety_checker is None
    reference = load_pipeline(full, device="cpu")
    for name in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    fuse_qkv_projections(pipe)  # the CUDA preparation works without a ControlNet too
    for net in (pipe.unet, pipe.vae):
        assert {type(p) for p in net.attn_processors.values()} == {FusedAttnProcessor2_0}


def test_scheduler_registry(tiny_models: Path) -> None:
    import diffusers
    from diffusers import PNDMScheduler

    base = PNDMScheduler.from_pretrained(tiny_models / "stable-diffusion-v1-5" / "scheduler").config
    for name, (cls_name, extra) in SCHEDULER_CLASSES.items():
        sched = make_scheduler(name, base)
        assert type(sched).__name__ == cls_name
        # The beta schedule the model was trained with carries over.
        assert sched.config.beta_schedule == "scaled_linear"
        # Same timesteps as diffusers' own `Scheduler.from_config(pipe.scheduler.config)`.
        ref = getattr(diffusers, cls_name).from_config(base, **extra)
        sched.set_timesteps(20)
        ref.set_timesteps(20)
        assert torch.equal(sched.timesteps, ref.timesteps), name
    assert make_scheduler("dpmpp_2m", base).config.algorithm_type == "dpmsolver++"
    with pytest.raises(ConfigError, match="not one of"):
        make_scheduler("heun", base)


def test_the_scheduler_registry_maps_exactly_the_configs_names() -> None:
    """`JobConfig` validates scheduler names against config.SCHEDULERS; each needs a class here."""
    assert tuple(SCHEDULER_CLASSES) == SCHEDULERS


def test_load_pipeline_bfloat16_on_cpu(tiny_models: Path) -> None:
    spec = ModelSpec.from_config(JobConfig(model=str(tiny_models)))
    pipe = load_pipeline(spec, device="cpu", dtype="bfloat16")
    assert pipe.unet.dtype == pipe.controlnet.dtype == pipe.vae.dtype == torch.bfloat16


@pytest.mark.skipif(importlib.util.find_spec("peft") is not None, reason="peft is installed")
def test_lcm_lora_without_peft_is_a_clear_error(tiny_models: Path) -> None:
    spec = ModelSpec.from_config(JobConfig(model=str(tiny_models)))
    with pytest.raises(ModelLoadError, match="needs the `peft` package"):
        load_pipeline(spec, device="cpu", lcm_lora="latent-consistency/lcm-lora-sdv1-5")


def test_local_weights_are_checked_without_the_network(tmp_path: Path, tiny_models: Path) -> None:
    from difaug.diffusion.loading import check_local_models
    from difaug.run.layout import is_permanent

    check_local_models(ModelSpec.from_config(JobConfig(model=str(tiny_models))), "hed")  # complete: fine
    empty, file = tmp_path / "empty", tmp_path / "weights.bin"
    empty.mkdir()
    file.write_bytes(b"x")
    cases = [
        (ModelSpec(base=str(empty)), "seg", "the folder has no model_index.json"),
        (ModelSpec(base=str(file)), "seg", "a file, not a folder"),
        (ModelSpec(base=str(tmp_path / "nope")), "seg", "no such folder"),
        (
            ModelSpec(base=str(tiny_models / "stable-diffusion-v1-5"), controlnet=str(empty)),
            "seg",
            "config.json",
        ),
        (
            ModelSpec(
                base=str(tiny_models / "stable-diffusion-v1-5"),
                controlnet=str(tiny_models / "sd-controlnet-hed"),
                hed_weights=str(empty),
            ),
            "hed",
            "ControlNetHED.pth not found. Supply them with --hed-weights",
        ),
    ]
    for spec, condition, says in cases:
        with pytest.raises(ModelLoadError, match=says) as err:
            check_local_models(spec, condition)
        assert is_permanent(err.value)  # not retried: no retry brings the files back
    assert not is_permanent(ModelLoadError("hub unreachable"))
