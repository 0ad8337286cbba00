"""The capture of DiffSeg's attention maps: the processor against explicit attention, on the tiny
UNet and another layout, float16 probabilities, and the compiled pass against the eager one."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _labels import same_partition  # noqa: E402

from difaug.diffusion import attention_capture, diffseg  # noqa: E402


def test_capture_on_the_tiny_unet_keeps_the_forward_and_restores_processors(tiny_pipe):
    seg = diffseg.DiffSeg(tiny_pipe, chunk=7)  # a chunk that does not divide the token count
    names = attention_capture.self_attention_names(seg.unet)
    assert names and all(".attn1." in n for n in names)
    saved = seg.unet.attn_processors
    before = {k: type(v) for k, v in saved.items()}
    image = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)

    latents = seg.latents(image)
    context = seg.context()
    t = torch.tensor(diffseg.TIMESTEP)
    with torch.no_grad():
        plain = seg.unet(latents, t, encoder_hidden_states=context, return_dict=False)[0]
    sink = attention_capture.AttentionSink(tuple(latents.shape[2:]))
    capture = attention_capture.CaptureSelfAttention(sink, chunk=7)
    seg.unet.set_attn_processor(
        {n: capture if n in names else p for n, p in seg.unet.attn_processors.items()}
    )
    with torch.no_grad():
        captured = seg.unet(latents, t, encoder_hidden_states=context, return_dict=False)[0]
    seg.unet.set_attn_processor(saved)
    torch.testing.assert_close(captured, plain, atol=1e-5, rtol=1e-4)  # same forward as SDPA's
    # Every captured level is a downscaled latent grid; each row is a probability distribution.
    for tokens, total in sink.mean_maps().items():
        assert sink.grid(tokens)
        torch.testing.assert_close(total.sum(-1), torch.ones_like(total.sum(-1)))

    seg2 = diffseg.DiffSeg(tiny_pipe)
    labels = seg2.segment(image)[0]
    assert labels.shape == (64, 64) and labels.dtype == np.int32
    assert {k: type(v) for k, v in seg2.unet.attn_processors.items()} == before  # SDPA restored
    # Chunking changes nothing but memory.
    assert same_partition(diffseg.DiffSeg(tiny_pipe, chunk=5).segment(image)[0], labels)


def test_capture_probabilities_are_the_attention_maps_mean_over_heads():
    from diffusers.models.attention_processor import Attention, AttnProcessor

    torch.manual_seed(0)
    attn = Attention(16, heads=2, dim_head=8).eval()
    x = torch.randn(3, 24, 16)  # a 4×6 token grid, batch 3
    sink = attention_capture.AttentionSink((4, 6))
    with torch.no_grad():
        out = attention_capture.CaptureSelfAttention(sink, chunk=7)(attn, x)  # 7 does not divide 24
        q = attn.to_q(x).view(3, 24, 2, 8).transpose(1, 2)
        k = attn.to_k(x).view(3, 24, 2, 8).transpose(1, 2)
        expected = ((q @ k.transpose(-1, -2)) * attn.scale).softmax(-1).mean(1)
        plain = AttnProcessor()(attn, x)  # diffusers' explicit softmax(q kᵀ · scale) v
    assert sink.layers == {24: 1}
    torch.testing.assert_close(sink.mean_maps()[24], expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-5)


def test_half_probabilities_keep_float32_sums_close_to_the_float32_maps():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(64, heads=4, dim_head=16).eval()
    x = torch.randn(2, 256, 64) * 3  # a 16×16 grid: peaked rows, as real attention
    sinks = {dtype: attention_capture.AttentionSink((16, 16)) for dtype in (None, torch.float16)}
    with torch.no_grad():
        outs = {
            d: attention_capture.CaptureSelfAttention(sink, 100, probs_dtype=d)(attn, x)
            for d, sink in sinks.items()
        }
    full, half = (sinks[d].mean_maps()[256] for d in (None, torch.float16))
    assert half.dtype == torch.float32  # the sums stay float32
    assert not torch.equal(half, full)  # the probabilities really were half precision
    # float16 logits carry |logit|·2^-11 of error, so a probability moves by about that share
    # (here ≤ 0.9 %, ≤ 5.4e-4 absolute); the mean over heads and layers is summed in float32.
    torch.testing.assert_close(half, full, rtol=2e-2, atol=1e-3)
    assert (half - full).abs().mean() < 1e-5
    torch.testing.assert_close(half.sum(-1), torch.ones(2, 256), rtol=0, atol=2e-3)
    assert torch.equal(outs[None], outs[torch.float16])  # the layer's output is SDPA's either way


def test_capture_on_a_unet_with_attention_at_every_level():
    """Another layout than the tiny model's: attention at two levels and in the mid block."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=4,
        norm_num_groups=8,
    ).eval()
    names = attention_capture.self_attention_names(unet)
    sink = attention_capture.AttentionSink((16, 16))
    capture = attention_capture.CaptureSelfAttention(sink, chunk=50)
    unet.set_attn_processor({n: capture if n in names else p for n, p in unet.attn_processors.items()})
    with torch.no_grad():
        unet(torch.randn(1, 4, 16, 16), diffseg.TIMESTEP, encoder_hidden_states=torch.randn(1, 5, 8))
    # 16×16: one down + two up layers; 8×8: one down + one mid + two up layers.
    assert sink.layers == {256: 3, 64: 4}
    maps = sink.mean_maps()
    labels = diffseg.segment_maps(maps, (16, 16), 2)[0]
    assert labels.shape == (32, 32) and labels.min() == 0


class _Reporter:
    """What a generator offers the compiled pass: its batch size, cache folder, warm-up, warnings."""

    def __init__(self, batch_size: int = 4) -> None:
        self.batch_size, self.compile_cache_dir = batch_size, ""
        self.warmup_seconds, self.warnings = 0.0, []


def test_compiled_scoring_pass_equals_the_eager_pass_and_compiles_once(tiny_pipe):
    # aot_eager: the real dynamo trace (what inductor compiles) without its minutes of C++ here.
    reporter = _Reporter(batch_size=4)
    before = dict(tiny_pipe.unet.attn_processors)
    compiled = attention_capture.CompiledPass(tiny_pipe, reporter, backend="aot_eager")
    # The second module tree shares every weight; the generator's processors stay as they were.
    assert all(a is b for a, b in zip(compiled.unet.parameters(), tiny_pipe.unet.parameters(), strict=True))
    assert all(tiny_pipe.unet.attn_processors[k] is v for k, v in before.items())
    eager, fast = diffseg.DiffSeg(tiny_pipe), diffseg.DiffSeg(tiny_pipe, compiled=compiled)
    images = np.random.default_rng(5).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    want = {k: v.clone() for k, v in eager.attention(images[:3])[0].items()}
    got = fast.attention(images[:3])[0]  # padded to 4
    for tokens, maps in want.items():
        assert got[tokens].shape == maps.shape
        torch.testing.assert_close(got[tokens], maps, rtol=1e-5, atol=1e-7)
    assert reporter.warmup_seconds > 0 and compiled.warm_shapes == {
        (4, *compiled_latent_shape(eager, images))
    }
    torch._dynamo.config.error_on_recompile = True  # any other batch count reuses the one graph
    try:
        assert next(iter(fast.attention(images[:1])[0].values())).shape[0] == 1
        five = fast.attention(images)[0]  # 4 + 1 padded to 4
    finally:
        torch._dynamo.config.error_on_recompile = False
    for tokens, maps in eager.attention(images)[0].items():
        torch.testing.assert_close(five[tokens], maps, rtol=1e-5, atol=1e-7)
    assert reporter.warnings == []
    masks = [np.where(np.arange(64)[None, :] < 32, 3, 0).repeat(64, 0).astype(np.uint8)] * 5
    assert fast.drift_scores(list(images), masks, [3] * 5) == eager.drift_scores(list(images), masks, [3] * 5)


def compiled_latent_shape(seg, images) -> tuple[int, ...]:
    return tuple(seg.latents(images[:1]).shape[1:])


def test_a_compile_failure_is_a_warning_and_the_scorer_runs_eagerly(tiny_pipe):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    reporter = _Reporter()
    fast = diffseg.DiffSeg(
        tiny_pipe, compiled=attention_capture.CompiledPass(tiny_pipe, reporter, backend=broken_backend)
    )
    images = np.random.default_rng(6).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    got = fast.attention(images)[0]
    want = diffseg.DiffSeg(tiny_pipe).attention(images)[0]
    assert not fast.compiled.usable
    assert len(reporter.warnings) == 1 and "scoring eagerly" in reporter.warnings[0]
    assert "no compiler here" in reporter.warnings[0]
    for tokens, maps in want.items():
        assert torch.equal(got[tokens], maps)  # the eager pass, exactly


def test_a_compiled_generator_gets_a_compiled_scorer_and_an_eager_one_does_not(tiny_models):
    from difaug.core.config import JobConfig, RuntimeConfig
    from difaug.diffusion.sampler import AuxGenerator
    from difaug.diffusion.speed import compile_pipeline, restore_eager

    cfg = JobConfig(model=str(tiny_models), score="diffseg").validate()
    eager_gen = AuxGenerator.from_config(cfg, RuntimeConfig(device="cpu", compile="off"))
    assert diffseg.for_generator(eager_gen, cfg).compiled is None
    pipe = AuxGenerator.from_config(cfg, RuntimeConfig(device="cpu", compile="off")).pipe  # its own modules
    compile_pipeline(pipe, backend="aot_eager", parts=("unet",))
    gen = AuxGenerator(pipe, cfg, batch_size=3, compile_cache_dir="cache-here")
    compiled = diffseg.for_generator(gen, cfg).compiled
    assert compiled is not None and compiled.batch_size == 3 and compiled.cache_dir == "cache-here"
    assert compiled.reporter is gen and compiled.usable
    assert diffseg.for_generator(gen, JobConfig(score="none").validate()) is None
    assert compiled.backend == "aot_eager"
    # A generator whose compile failed runs eagerly: its scorer follows, with no warning of its own.
    restore_eager(pipe)
    assert not compiled.usable and gen.warnings == []


def test_the_scoring_pass_compiles_in_the_generators_mode(tiny_models):
    """A generator compiled with `reduce-overhead` (CUDA graphs) or `max-autotune` gets a scoring
    pass compiled the same way (torch.compile is lazy: nothing compiles here)."""
    from difaug.core.config import JobConfig, RuntimeConfig
    from difaug.diffusion.sampler import AuxGenerator
    from difaug.diffusion.speed import compile_pipeline

    cfg = JobConfig(model=str(tiny_models), score="diffseg").validate()
    for mode in ("reduce-overhead", "max-autotune"):
        pipe = AuxGenerator.from_config(cfg, RuntimeConfig(device="cpu", compile="off")).pipe
        compile_pipeline(pipe, mode=mode, parts=("unet",))
        compiled = diffseg.for_generator(AuxGenerator(pipe, cfg, batch_size=2), cfg).compiled
        assert compiled is not None and (compiled.backend, compiled.mode) == ("inductor", mode)
