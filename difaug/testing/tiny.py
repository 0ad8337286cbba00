"""Tiny random models in the real on-disk layout, for tests, demos and benchmarks.

`make_tiny` (and `difaug models make-tiny`) writes a Stable Diffusion 1.5 + ControlNet (hed, seg,
scribble) + HED bundle with random weights, in the hub repos' own layouts, so everything that
loads real weights (`difaug.diffusion.loading.load_pipeline`, the HED annotator) loads these through the
same `from_pretrained` code. Its CLIP tokenizer is a byte-level BPE trained here on the class
names and default prompts. Nothing here is needed to run a real job.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from difaug.conditions import HED_FILENAME
from difaug.core.config import CONDITIONS, DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT
from difaug.diffusion.loading import quiet_loading
from difaug.diffusion.specs import BASE_DIRNAME, BUNDLE_INDEX, HED_DIRNAME

# Sizes of the tiny pipeline. The VAE has 2 blocks, so it scales by 2; the ControlNet's
# conditioning embedding has 2 channel stages (one stride-2 conv), so it scales by 2 as well —
# the two must agree or the control residuals do not fit the latents.
TINY_CHANNELS = (16, 32)
TINY_CROSS_DIM = 32
TINY_NORM_GROUPS = 8
TINY_VOCAB = 1000
TINY_COND_CHANNELS = (8, 16)

# Stable Diffusion 1.5's scheduler/scheduler_config.json (PNDM), as the hub repo ships it.
SD15_SCHEDULER = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
# feature_extractor/preprocessor_config.json of the hub repo (only the safety checker reads it).
SD15_FEATURE_EXTRACTOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}


def make_tiny(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random SD1.5 + ControlNet (hed, seg, scribble) + HED bundle into `out_dir`.

    Layout (the hub repos' own):
        out_dir/difaug-models.json
        out_dir/stable-diffusion-v1-5/{model_index.json, unet/, vae/, text_encoder/, tokenizer/,
                                       scheduler/, feature_extractor/}
        out_dir/sd-controlnet-{hed,seg,scribble}/{config.json, diffusion_pytorch_model.safetensors}
        out_dir/Annotators/ControlNetHED.pth
    Sizes: UNet/ControlNet channels (16, 32), one layer per block, cross-attention dim 32; VAE
    with 2 blocks (scale factor 2, so a 64×64 condition has 32×32 latents; conditions must be
    multiples of 4); CLIP text encoder with 2 layers of width 32 and a ~900-token BPE vocabulary
    trained on the class names and default prompts. About 3 MB, plus the HED file (the real
    architecture with random weights, 29 MB). A 64×64 image at 20 steps takes ~0.7 s on one
    CPU core in batches of 8 (~1.2 s alone). Same `seed` → the same bytes. Returns `out_dir`."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / BASE_DIRNAME
    with torch.random.fork_rng(devices=[]), quiet_loading():
        vocab_size = _write_tokenizer(base / "tokenizer")
        unet = _tiny_unet(seed)
        unet.save_pretrained(base / "unet", safe_serialization=True)
        _tiny_vae(seed).save_pretrained(base / "vae", safe_serialization=True)
        _tiny_text_encoder(seed, vocab_size).save_pretrained(base / "text_encoder", safe_serialization=True)
        for i, cond in enumerate(CONDITIONS):
            _tiny_controlnet(unet, seed, 10 + i).save_pretrained(
                out_dir / f"sd-controlnet-{cond}", safe_serialization=True
            )
    _write_json(
        base / "scheduler" / "scheduler_config.json",
        {"_class_name": "PNDMScheduler", **_versions(), **SD15_SCHEDULER},
    )
    _write_json(base / "feature_extractor" / "preprocessor_config.json", SD15_FEATURE_EXTRACTOR)
    _write_json(base / "model_index.json", _model_index())
    _write_hed(out_dir / HED_DIRNAME / HED_FILENAME, seed)
    _write_json(
        out_dir / BUNDLE_INDEX,
        {
            "format": "difaug-models/1",
            "base_model": BASE_DIRNAME,
            "controlnets": {c: f"sd-controlnet-{c}" for c in CONDITIONS},
            "hed_weights": HED_DIRNAME,
            "note": f"tiny random weights (seed {seed}) for tests and demos; images are noise",
        },
    )
    return out_dir


def _versions() -> dict[str, str]:
    import diffusers

    return {"_diffusers_version": diffusers.__version__}


def _model_index() -> dict[str, Any]:
    return {
        "_class_name": "StableDiffusionPipeline",
        **_versions(),
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _seed(seed: int, part: int) -> None:
    import torch

    torch.manual_seed(seed * 1009 + part)


def _tiny_unet(seed: int) -> Any:
    from diffusers import UNet2DConditionModel

    _seed(seed, 1)
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=TINY_CHANNELS,
        # The attention at the low-resolution level only, as diffusers' own tiny test models: cheap.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_CROSS_DIM,
        attention_head_dim=4,
        norm_num_groups=TINY_NORM_GROUPS,
    )


def _tiny_controlnet(unet: Any, seed: int, part: int) -> Any:
    import torch
    from diffusers import ControlNetModel

    _seed(seed, part)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=TINY_COND_CHANNELS)
    # A real ControlNet starts from zero convolutions and learns them; zeros here would make the
    # condition invisible in the output, and tests could not tell conditions apart.
    zero_convs = [
        *net.controlnet_down_blocks,
        net.controlnet_mid_block,
        net.controlnet_cond_embedding.conv_out,
    ]
    with torch.no_grad():
        for conv in zero_convs:
            for p in conv.parameters():
                p.normal_(0.0, 0.2)
    return net


def _tiny_vae(seed: int) -> Any:
    from diffusers import AutoencoderKL

    _seed(seed, 2)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(TINY_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(TINY_CHANNELS),
        block_out_channels=TINY_CHANNELS,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=TINY_NORM_GROUPS,
        sample_size=64,
    )


def _tiny_text_encoder(seed: int, vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    _seed(seed, 3)
    config = CLIPTextConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=TINY_CROSS_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TINY_CROSS_DIM,
        hidden_act="quick_gelu",
        # The tokenizer puts its two special tokens last, as CLIP's does (49406, 49407).
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config).eval()


def _write_hed(path: Path, seed: int) -> None:
    from difaug.conditions.hed import make_random_hed_weights

    path.parent.mkdir(parents=True, exist_ok=True)
    make_random_hed_weights(path, seed)


# --- tokenizer: CLIP's byte-level BPE files, trained on a small fixed corpus -----------------


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) reversible byte → printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _corpus_words() -> Counter[tuple[str, ...]]:
    from difaug.core.classes import class_table

    text = " ".join([DEFAULT_PROMPT, DEFAULT_NEGATIVE_PROMPT])
    for dataset in ("pascal", "coco"):
        text += " " + " ".join(c.class_name for c in class_table(dataset).values())
    words = Counter(re.findall(r"[a-z]+", text.lower().replace("{class_name}", "")))
    return Counter({(*w[:-1], w[-1] + "</w>"): n for w, n in words.items()})


def _train_bpe(words: Counter[tuple[str, ...]], max_merges: int) -> list[tuple[str, str]]:
    """Plain BPE: merge the most frequent adjacent pair (ties: the smallest pair), repeat."""
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, n in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, n in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def _write_tokenizer(folder: Path) -> int:
    """vocab.json + merges.txt + the two config files, as in the SD1.5 repo; returns the vocab size."""
    base = list(_bytes_to_unicode().values())
    vocab_list = base + [c + "</w>" for c in base]
    merges = _train_bpe(_corpus_words(), TINY_VOCAB - len(vocab_list) - 2)
    vocab_list += ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(
        folder / "tokenizer_config.json",
        {
            **special,
            "add_prefix_space": False,
            "do_lower_case": True,
            "errors": "replace",
            "model_max_length": 77,
            "tokenizer_class": "CLIPTokenizer",
        },
    )
    return len(vocab)
