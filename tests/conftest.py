"""Fixtures shared across test modules. Area-specific helpers live in their own `tests/_*.py` modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the network: any hub lookup fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[1]
DEMO_MANIFEST = REPO / "manifests" / "demo" / "manifest.csv"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SD1.5 + ControlNet (hed, seg, scribble) + HED bundle, built once per session."""
    from difaug.testing.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="module")
def tiny_pipe(tiny_models: Path):
    """The tiny SD1.5 + HED ControlNet pipeline, loaded on the CPU in float32 (once per module)."""
    from difaug.diffusion.loading import load_pipeline
    from difaug.diffusion.specs import ModelSpec

    return load_pipeline(
        ModelSpec(
            base=str(tiny_models / "stable-diffusion-v1-5"), controlnet=str(tiny_models / "sd-controlnet-hed")
        ),
        device="cpu",
        dtype="float32",
    )


@pytest.fixture(scope="session")
def demo_manifest() -> Path:
    return DEMO_MANIFEST


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model's kernels gain nothing from a second thread, and OpenMP threads slow down
    ~10× when another process holds a core (measured on the 2-core CI machine). Modules that run the
    tiny generator use it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
