"""`difaug.core.device`: what `auto` means on this machine, and what it refuses."""

from __future__ import annotations

import pytest
import torch

from difaug.core.config import ConfigError
from difaug.core.device import resolve_device, resolve_dtype, torch_dtype

CUDA = torch.cuda.is_available()


def test_auto_is_cuda_when_a_gpu_is_visible_else_cpu() -> None:
    expected = "cuda" if CUDA else "cpu"
    assert resolve_device("auto") == resolve_device(None) == resolve_device("") == expected
    assert resolve_device("cpu") == "cpu"


@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
def test_an_explicit_cuda_device_without_cuda_is_refused() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:1")


def test_a_device_torch_does_not_know_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a torch device"):
        resolve_device("gpu0")


@pytest.mark.parametrize(
    ("dtype", "device", "expected"),
    [
        ("auto", "cpu", "float32"),
        ("auto", "cuda", "float16"),
        (None, "cuda:0", "float16"),
        ("fp16", "cuda", "float16"),
        ("torch.bfloat16", "cpu", "bfloat16"),
        ("FP32", "cuda", "float32"),
    ],
)
def test_resolve_dtype(dtype: str | None, device: str, expected: str) -> None:
    assert resolve_dtype(dtype, device) == expected


def test_half_precision_on_the_cpu_only_when_asked_for() -> None:
    with pytest.raises(ConfigError, match="float16 is not supported on CPU"):
        resolve_dtype("float16", "cpu")
    assert resolve_dtype("half", "cpu", cpu_half=True) == "float16"
    with pytest.raises(ConfigError, match="fp8"):
        resolve_dtype("fp8", "cpu")


def test_torch_dtype_of_every_spelling() -> None:
    assert torch_dtype("float32") is torch.float32
    assert torch_dtype("fp16") is torch.float16
    assert torch_dtype("bf16") is torch.bfloat16
    with pytest.raises(KeyError):
        torch_dtype("auto")  # resolve it first: `auto` depends on the device


def test_the_hed_network_resolves_with_the_same_rules() -> None:
    from difaug.conditions import hed

    assert str(hed.resolve_device("cpu")) == resolve_device("cpu") == "cpu"
    # the HED network may run in half precision on the CPU (small; its overflow fallback is tested)
    assert hed.resolve_dtype("fp16", hed.resolve_device("cpu")) is torch.float16
