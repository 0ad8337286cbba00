"""The tiny bundle (`difaug.testing.tiny.make_tiny`): the hub repos' layout, determinism, a CLIP-like tokenizer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from typer.testing import CliRunner

from difaug.cli import app
from difaug.diffusion.specs import BUNDLE_INDEX
from difaug.testing.tiny import make_tiny


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


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
