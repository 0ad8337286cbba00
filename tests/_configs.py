"""Config values shared by the tests of the config (`tests/core/test_config.py`) and of the
`difaug generate` flags (`tests/cli/test_generate_cli.py`)."""

from __future__ import annotations

# A valid value other than the default for every field: a new field fails
# `test_config.test_a_value_for_every_field` until its YAML round trip is covered here.
CHANGED_JOB = {
    "condition": "seg",
    "condition_style": "upstream",
    "num_aux": 2,
    "seed": 7,
    "resolution": 256,
    "detect_resolution": 384,
    "model": "org/bundle",
    "base_model": "org/base",
    "controlnet": "org/controlnet",
    "hed_weights": "org/hed",
    "scheduler": "ddim",
    "steps": 5,
    "guidance_scale": 7.5,
    "controlnet_scale": 0.5,
    "prompt_template": "a photo of {class_name}",
    "negative_prompt": "blurry",
    "lcm_lora": "org/lcm",
    "image_format": "jpeg",
    "jpeg_quality": 80,
    "shard_size": 16,
    "score": "none",
    "cache_interval": 3,
}
CHANGED_RUNTIME = {
    "cluster": "sync",
    "scheduler_address": "tcp://host:8786",
    "workers": 3,
    "threads_per_worker": 2,
    "retries": 0,
    "device": "cpu",
    "dtype": "bfloat16",
    "batch_size": 4,
    "hed_batch": 2,
    "compile": "off",
    "compile_mode": "max-autotune",
    "offload": True,
    "progress": False,
    "slurm": {"queue": "gpu", "cores": 8},
    "max_side": 4096,
    "max_aspect": 8.0,
    "max_pixels": 1_000_000,
    "compile_min_images": 10,
    "compile_cache_dir": "/tmp/compile-cache",
    "vae_batch": 2,
    "encode_threads": 3,
    "prepare_threads": 2,
}
