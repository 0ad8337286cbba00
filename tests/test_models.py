"""Model specs, loading errors, device/dtype resolution and the tiny bundle's layout and determinism."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from difaug.cli import app
from difaug.core.config import DEFAULT_BASE_MODEL, ConfigError, JobConfig
from difaug.diffusion.models import (
    BUNDLE_INDEX,
    COMPILE_CACHE_DIRNAME,
    DEFAULT_VAE_BATCH,
    SCHEDULERS,
    ModelLoadError,
    ModelSpec,
    batched_vae_decode,
    decide_compile,
    fuse_qkv_projections,
    load_pipeline,
    make_scheduler,
    resolve_device,
    resolve_dtype,
    runtime_for_plan,
)
from difaug.testing.tiny import make_tiny


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---- the tiny bundle ----------------------------------------------------------------------------


def test_make_tiny_is_deterministic(tiny_models: Path, tmp_path: Path) -> None:
    again = make_tiny(tmp_path / "again")
    assert _hashes(again) == _hashes(tiny_models)
    other_seed = _hashes(make_tiny(tmp_path / "seed1", seed=1))
    unet = "stable-diffusion-v1-5/unet/diffusion_pytorch_model.safetensors"
    assert other_seed[unet] != _hashes(tiny_models)[unet]


def test_make_tiny_has_the_hub_layout(tiny_models: Path) -> None:
    base = tiny_models / "stable-diffusion-v1-5"
    index = json.loads((base / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]
    assert index["safety_checker"] == [None, None]
    for rel in (
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
        "feature_extractor/preprocessor_config.json",
    ):
        assert (base / rel).is_file(), rel
    scheduler = json.loads((base / "scheduler/scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "PNDMScheduler" and scheduler["steps_offset"] == 1

    unet = json.loads((base / "unet/config.json").read_text())
    vae = json.loads((base / "vae/config.json").read_text())
    for cond in ("hed", "seg", "scribble"):
        folder = tiny_models / f"sd-controlnet-{cond}"
        assert sorted(p.name for p in folder.iterdir()) == [
            "config.json",
            "diffusion_pytorch_model.safetensors",
        ]
        cn = json.loads((folder / "config.json").read_text())
        assert cn["_class_name"] == "ControlNetModel"
        for key in ("block_out_channels", "cross_attention_dim", "down_block_types", "layers_per_block"):
            assert cn[key] == unet[key], key
        # The condition embedding must downsample exactly as much as the VAE does.
        assert 2 ** (len(cn["conditioning_embedding_out_channels"]) - 1) == 2 ** (
            len(vae["block_out_channels"]) - 1
        )
    assert (tiny_models / "Annotators" / "ControlNetHED.pth").stat().st_size > 0

    bundle = json.loads((tiny_models / BUNDLE_INDEX).read_text())
    assert bundle["base_model"] == "stable-diffusion-v1-5"
    assert bundle["controlnets"] == {c: f"sd-controlnet-{c}" for c in ("hed", "seg", "scribble")}
    assert bundle["hed_weights"] == "Annotators"


def test_tiny_tokenizer_loads_like_clips(tiny_models: Path) -> None:
    from transformers import CLIPTextModel, CLIPTokenizer

    base = tiny_models / "stable-diffusion-v1-5"
    tok = CLIPTokenizer.from_pretrained(base / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(base / "text_encoder")
    assert tok.model_max_length == 77
    ids = tok("a real shot photo of cat").input_ids
    assert ids[0] == tok.bos_token_id == encoder.config.bos_token_id
    assert ids[-1] == tok.eos_token_id == encoder.config.eos_token_id
    assert tok.convert_ids_to_tokens(ids[1:3]) == ["a</w>", "real</w>"]
    assert max(ids) < encoder.config.vocab_size


def test_cli_make_tiny(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["models", "make-tiny", str(tmp_path / "tiny"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiny" / BUNDLE_INDEX).is_file()
    assert (tmp_path / "tiny" / "sd-controlnet-seg" / "config.json").is_file()

    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = CliRunner().invoke(app, ["models", "make-tiny", str(a_file)])
    assert result.exit_code != 0
    assert "not a folder" in " ".join(result.output.split())


def test_cli_models_show(tiny_models: Path) -> None:
    result = CliRunner().invoke(app, ["models", "show", "--model", str(tiny_models), "--condition", "seg"])
    assert result.exit_code == 0, result.output
    assert "sd-controlnet-seg" in result.output
    assert "Annotators" in result.output


# ---- model specs --------------------------------------------------------------------------------


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

    from difaug.diffusion.models import load_scoring_pipeline

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
    for name, (cls_name, extra) in SCHEDULERS.items():
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


def test_load_pipeline_bfloat16_on_cpu(tiny_models: Path) -> None:
    spec = ModelSpec.from_config(JobConfig(model=str(tiny_models)))
    pipe = load_pipeline(spec, device="cpu", dtype="bfloat16")
    assert pipe.unet.dtype == pipe.controlnet.dtype == pipe.vae.dtype == torch.bfloat16


@pytest.mark.skipif(importlib.util.find_spec("peft") is not None, reason="peft is installed")
def test_lcm_lora_without_peft_is_a_clear_error(tiny_models: Path) -> None:
    spec = ModelSpec.from_config(JobConfig(model=str(tiny_models)))
    with pytest.raises(ModelLoadError, match="needs the `peft` package"):
        load_pipeline(spec, device="cpu", lcm_lora="latent-consistency/lcm-lora-sdv1-5")


# ---- the fast path: compile decision, batched VAE decode, fused QKV -------------------------------


@pytest.mark.parametrize(
    ("setting", "device", "planned", "offload", "expected"),
    [
        ("auto", "cuda", 5000, False, True),
        ("auto", "cuda:1", 1000, False, True),  # exactly the threshold compiles
        ("auto", "cuda", 999, False, False),  # a short job stays eager
        ("auto", "cuda", None, False, True),  # count unknown on the worker: the driver already decided
        ("auto", "cpu", 10**6, False, False),  # never on the CPU by itself
        ("auto", "cuda", 10**6, True, False),  # offload and compile do not mix
        ("on", "cpu", 1, False, True),  # an explicit setting is obeyed
        (True, "cpu", 1, False, True),
        ("off", "cuda", 10**6, False, False),
        (False, "cuda", 10**6, False, False),
        ("true", "cuda", 0, False, True),  # YAML strings
    ],
)
def test_decide_compile(setting, device, planned, offload, expected) -> None:
    assert decide_compile(setting, device, planned, 1000, offload=offload) is expected


def test_decide_compile_refuses_unknown_settings() -> None:
    with pytest.raises(ConfigError, match="auto, on, off"):
        decide_compile("sometimes", "cuda")


def test_runtime_for_plan(tmp_path: Path) -> None:
    from difaug.core.config import RuntimeConfig

    rt = RuntimeConfig(compile_min_images=100)
    assert rt.compile == "auto"
    short = runtime_for_plan(rt, str(tmp_path), 99)
    assert short.compile == "off"
    assert short.compile_cache_dir == str(tmp_path / COMPILE_CACHE_DIRNAME)
    long = runtime_for_plan(rt, str(tmp_path), 100)
    assert long.compile == "auto"  # the worker decides with its device
    mine = runtime_for_plan(RuntimeConfig(compile=True, compile_cache_dir="/shared/cache"), str(tmp_path), 1)
    assert mine.compile is True and mine.compile_cache_dir == "/shared/cache"


@pytest.fixture(scope="module")
def tiny_pipe(tiny_models: Path):
    spec = ModelSpec.from_config(JobConfig(model=str(tiny_models), condition="seg"))
    return load_pipeline(spec, device="cpu")


def _decode_all(vae, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(z, return_dict=False)[0]


def test_batched_vae_decode_equals_one_at_a_time(tiny_pipe) -> None:
    """Tolerance: batched vs single convolutions differ by summation order only (measured ~1e-6
    on the tiny fp32 model); asserted ≤ 1e-5 (the images are in [-1, 1])."""
    vae = tiny_pipe.vae
    z = torch.randn(5, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    try:
        batched_vae_decode(vae, 1)
        single = _decode_all(vae, z)
        batched_vae_decode(vae, 4)  # chunks of 4 + 1
        chunked = _decode_all(vae, z)
        batched_vae_decode(vae, 4, pad=True)  # the last chunk padded to 4, as when compiled
        padded = _decode_all(vae, z)
        # Batch mates do not matter: the first image decoded beside other latents is the same.
        others = torch.cat([z[:1], torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(1))])
        mates = _decode_all(vae, others)
    finally:
        batched_vae_decode(vae, DEFAULT_VAE_BATCH)
    assert single.shape == chunked.shape == padded.shape == (5, 3, 64, 64)
    assert (chunked - single).abs().max() <= 1e-5
    assert (padded - single).abs().max() <= 1e-5
    assert (mates[0] - single[0]).abs().max() <= 1e-5
    assert (mates[1] - single[1]).abs().max() > 1e-2  # a different latent gives a different image


def test_fused_qkv_projections_give_the_same_outputs(tiny_models: Path) -> None:
    """diffusers' fused projections on UNet, ControlNet and VAE: the same numbers within fp32
    summation-order tolerance (measured ~1e-6)."""
    spec = ModelSpec.from_config(JobConfig(model=str(tiny_models), condition="seg"))
    pipe = load_pipeline(spec, device="cpu")
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, 77, 32, generator=g)
    cond = torch.rand(2, 3, 64, 64, generator=g)

    def run():
        with torch.no_grad():
            down, mid = pipe.controlnet(
                x, 10, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False
            )
            out = pipe.unet(
                x, 10, encoder_hidden_states=text, down_block_additional_residuals=down,
                mid_block_additional_residual=mid, return_dict=False,
            )[0]  # fmt: skip
            return out, pipe.vae.decode(x, return_dict=False)[0]

    before = run()
    fuse_qkv_projections(pipe)
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    for net in (pipe.unet, pipe.controlnet, pipe.vae):  # the fused weights are the ones in use
        assert {type(p) for p in net.attn_processors.values()} == {FusedAttnProcessor2_0}
    after = run()
    for a, b in zip(before, after, strict=True):
        assert (a - b).abs().max() <= 1e-4
