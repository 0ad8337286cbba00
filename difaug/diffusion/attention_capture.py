"""DiffSeg's step 1, the capture: self-attention probabilities of one UNet pass, summed per token
resolution (mean over heads), without changing the layer's output.

`CaptureSelfAttention` is a diffusers attention processor for the UNet's self-attention modules
(`attn1`, `self_attention_names`): the layer's output stays SDPA's, and the probabilities are
computed apart, in chunks of query rows, into an `AttentionSink` (one running sum per resolution),
so no layer's full per-head map (4096×4096×heads at 64×64 tokens) is ever held. The eager pass
(`difaug.diffusion.diffseg.DiffSeg.attention`) swaps these processors onto the UNet for one call
and back; `CompiledPass` is the same pass under `torch.compile`, for a compiled generator's job.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Query rows per chunk in the capture: 8 heads × 1024 × 4096 float32 = 128 MiB per image at 64×64
# tokens (the full map would be 512 MiB per layer).
QUERY_CHUNK = 1024


class AttentionSink:
    """Running per-resolution sums of self-attention maps, mean over heads: `{tokens: (B, N, N)}`.

    `add` is called by the capture processor chunk by chunk; a layer is counted when its first
    chunk (start 0) arrives."""

    def __init__(self, latent_hw: tuple[int, int], dtype: torch.dtype | None = None) -> None:
        import torch

        self.latent_hw = latent_hw
        self.dtype = dtype or torch.float32
        self.sums: dict[int, torch.Tensor] = {}
        self.layers: dict[int, int] = {}

    def grid(self, tokens: int) -> tuple[int, int]:
        """(h, w) of a token grid of `tokens` positions with the latent's aspect."""
        h, w = self.latent_hw
        ratio = math.isqrt((h * w) // tokens) if tokens else 0
        if ratio < 1 or (h * w) != tokens * ratio * ratio or h % ratio or w % ratio:
            raise ValueError(f"{tokens} attention tokens are not a downscaled {h}×{w} latent grid")
        return h // ratio, w // ratio

    def add(self, probs: torch.Tensor, start: int) -> None:
        """`probs` (B, heads, rows, N): softmax rows `start:start+rows` of one layer's map."""
        batch, _, rows, tokens = probs.shape
        self.grid(tokens)
        if tokens not in self.sums:
            self.sums[tokens] = probs.new_zeros((batch, tokens, tokens), dtype=self.dtype)
            self.layers[tokens] = 0
        if start == 0:
            self.layers[tokens] += 1
        # The mean over heads accumulates in the sink's dtype whatever the probabilities' dtype
        # (float16 probabilities: float32 sums, `CaptureSelfAttention(probs_dtype=…)`).
        self.sums[tokens][:, start : start + rows] += probs.mean(1, dtype=self.dtype)

    def mean_maps(self) -> dict[int, torch.Tensor]:
        """`{tokens: (B, N, N)}`, the mean over layers of each resolution (in place)."""
        if not self.sums:
            raise RuntimeError("no self-attention was captured: does the UNet have attn1 modules?")
        for tokens, total in self.sums.items():
            total /= self.layers[tokens]
        return self.sums


class CaptureSelfAttention:
    """A diffusers attention processor for self-attention that also feeds an `AttentionSink`.

    The layer's output is `AttnProcessor2_0`'s (scaled_dot_product_attention: the forward is the
    one the UNet runs without the capture). The probabilities for the sink are computed apart,
    `chunk` query rows at a time, in float32, as `AttnProcessor` does (`get_attention_scores`: one
    `baddbmm` with the scale, then softmax), so peak memory is one chunk of probabilities and each
    chunk is written once, read by the softmax and once by the mean over heads. `probs_dtype`
    float16 computes the scores and the softmax in half precision (tensor cores, half the bytes;
    the softmax still accumulates in float32 on CUDA) while the sink's sums stay float32: opt-in
    until measured on real weights (`benchmarks/diffseg_speed.py --device cuda` prints the share of
    label pixels that change and the max |Δ drift_iou|)."""

    def __init__(
        self, sink: AttentionSink, chunk: int = QUERY_CHUNK, probs_dtype: torch.dtype | None = None
    ) -> None:
        self.sink = sink
        self.chunk = chunk
        self.probs_dtype = probs_dtype

    # Copied in part from diffusers.models.attention_processor.AttnProcessor2_0.__call__ (the
    # projections, norms and reshapes); the probabilities are the chunked softmax below.
    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        import torch

        if encoder_hidden_states is not None:
            raise ValueError("CaptureSelfAttention is for self-attention (attn1) modules only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, tokens, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        heads = attn.heads
        dtype = self.probs_dtype or torch.float32
        query_f = query.to(dtype).reshape(batch_size * heads, tokens, head_dim)
        key_t = key.to(dtype).reshape(batch_size * heads, tokens, head_dim).transpose(-1, -2)
        mask = None if attention_mask is None else attention_mask.to(dtype).expand(-1, heads, tokens, -1)
        for start in range(0, tokens, self.chunk):
            stop = min(tokens, start + self.chunk)
            rows = stop - start
            if mask is None:
                bias, beta = query_f.new_empty((batch_size * heads, rows, tokens)), 0.0
            else:
                bias, beta = mask[:, :, start:stop].reshape(batch_size * heads, rows, tokens), 1.0
            scores = torch.baddbmm(bias, query_f[:, start:stop], key_t, beta=beta, alpha=attn.scale)
            del bias
            probs = scores.softmax(-1)
            del scores
            self.sink.add(probs.view(batch_size, heads, rows, tokens), start)
            del probs

        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def self_attention_names(unet: Any) -> list[str]:
    """Processor names of the UNet's self-attention modules (`…attn1.processor`), any layout."""
    return [name for name in unet.attn_processors if name.endswith("attn1.processor")]


class CompiledPass:
    """DiffSeg's UNet pass under `torch.compile` (static shapes), for a compiled generator.

    The eager pass swaps the capture processors onto the generator's UNet and back for each call;
    a compiled graph cannot follow such swaps (and the generator's own compiled UNet would be
    re-traced if its processors changed), so this pass runs on a second UNet module tree that
    shares every parameter and buffer with the generator's (`copy.deepcopy` with them in the memo:
    no weight is copied) and carries the capture processors for good. Its `AttentionSink` is reset
    at the start of each compiled call, so the graph sees the same objects every time. Batches are
    padded to `batch_size` (copies of the last latent, dropped after) so one graph serves every
    batch of a size. The first call of each shape is timed into the reporter's `warmup_seconds`
    and the compile cache saved, as the generator does; a compile failure is kept as a warning and
    the scorer runs eagerly from then on (a broken compiler never fails a shard)."""

    def __init__(
        self,
        pipe: Any,
        reporter: Any = None,
        *,
        batch_size: int | None = None,
        chunk: int = QUERY_CHUNK,
        probs_dtype: torch.dtype | None = None,
        mode: str | None = None,
        backend: Any = None,
        cache_dir: str | None = None,
    ) -> None:
        import copy
        import itertools

        import torch

        from difaug.diffusion.speed import DEFAULT_COMPILE_MODE, torch_compile_options

        self.pipe = pipe
        unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
        shared = {id(t): t for t in itertools.chain(unet.parameters(), unet.buffers())}
        self.unet = copy.deepcopy(unet, shared)
        self.sink = AttentionSink((1, 1))
        capture = CaptureSelfAttention(self.sink, chunk, probs_dtype)
        names = set(self_attention_names(self.unet))
        self.unet.set_attn_processor(
            {n: capture if n in names else p for n, p in self.unet.attn_processors.items()}
        )
        self.reporter = reporter
        self.batch_size = batch_size or int(getattr(reporter, "batch_size", 0) or 1)
        self.cache_dir = getattr(reporter, "compile_cache_dir", "") if cache_dir is None else cache_dir
        # The generator's own backend and mode (`compile_pipeline` records them) unless given: with
        # its `reduce-overhead` the pass is CUDA-graphed too.
        generator_options = getattr(pipe, "_difaug_compile_options", None) or {}
        self.backend = backend or generator_options.get("backend", "inductor")
        self.mode = mode or generator_options.get("mode", DEFAULT_COMPILE_MODE)
        self.fn = torch.compile(
            self._forward, dynamic=False, **torch_compile_options(self.mode, self.backend)
        )
        self.failed = False
        self.warm_shapes: set[tuple[int, ...]] = set()

    @property
    def usable(self) -> bool:
        """Not failed, and the generator still compiled (one that fell back to eager takes its
        scorer along: same compiler, same outcome, no second warning)."""
        from difaug.diffusion.speed import is_compiled

        return not self.failed and (is_compiled(self.pipe) or not hasattr(self.pipe, "_difaug_eager"))

    def _forward(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> dict:
        sink = self.sink
        sink.latent_hw = (latents.shape[2], latents.shape[3])
        sink.sums, sink.layers = {}, {}
        self.unet(latents, timestep, encoder_hidden_states=context, return_dict=False)
        return sink.mean_maps()

    def __call__(
        self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
    ) -> dict[int, torch.Tensor] | None:
        """`{N: (B, N, N)}` for `latents` (B, C, h, w), in slices of `batch_size` (the last padded),
        or None when compilation failed (then `usable` is False)."""
        import torch

        n, size = len(latents), self.batch_size
        parts: list[dict[int, torch.Tensor]] = []
        for start in range(0, n, size):
            part = latents[start : start + size]
            short = size - len(part)
            if short:
                part = torch.cat([part, part[-1:].expand(short, *part.shape[1:])])
            # One memory layout for every call (a cat with an expanded tensor may pick channels-last,
            # and a stride change is a recompile).
            maps = self._warm_call(part.contiguous(), timestep, context.expand(size, -1, -1).contiguous())
            if maps is None:
                return None
            parts.append({k: v[: size - short] for k, v in maps.items()})
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _warm_call(
        self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
    ) -> dict[int, torch.Tensor] | None:
        import time

        import torch

        from difaug.diffusion.speed import compiled_shapes_allowed, first_call_done

        shape = tuple(latents.shape)
        if shape in self.warm_shapes:
            with torch.no_grad(), compiled_shapes_allowed():
                return self.fn(latents, timestep, context)
        t0 = time.perf_counter()
        try:
            with torch.no_grad(), compiled_shapes_allowed():
                maps = self.fn(latents, timestep, context)
        except Exception as exc:
            self.failed = True
            self._warn(
                f"torch.compile of the drift-scoring pass failed, scoring eagerly: {type(exc).__name__}: {exc}"
            )
            return None
        seconds = first_call_done(self.warm_shapes, shape, t0, self.cache_dir, self._warn)
        if self.reporter is not None and hasattr(self.reporter, "warmup_seconds"):
            self.reporter.warmup_seconds += seconds
        return maps

    def _warn(self, message: str) -> None:
        import logging

        logging.getLogger(__name__).warning("%s", message[:500])
        if self.reporter is not None and hasattr(self.reporter, "warnings"):
            self.reporter.warnings.append(message[:500])
