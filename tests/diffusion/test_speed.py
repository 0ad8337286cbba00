"""Speed options: the compile decision, batched VAE decode and fused QKV projections."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from difaug.core.config import DEFAULT_VAE_BATCH, ConfigError, JobConfig
from difaug.diffusion.loading import load_pipeline
from difaug.diffusion.specs import ModelSpec
from difaug.diffusion.speed import (
    COMPILE_CACHE_DIRNAME,
    batched_vae_decode,
    decide_compile,
    fuse_qkv_projections,
)


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
    """The driver's half of `compile: auto` (difaug.run.compile_policy), beside the worker's half."""
    from difaug.core.config import RuntimeConfig
    from difaug.run.compile_policy import runtime_for_plan

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
