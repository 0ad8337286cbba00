"""The one rule telling a hub repo id from a local path (`difaug.core.hub`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from difaug.core.hub import hub_offline, looks_local


@pytest.mark.parametrize(
    "ref",
    ["stable-diffusion-v1-5/stable-diffusion-v1-5", "lllyasviel/Annotators", "org/name.v2", "a-b/c_d"],
)
def test_org_slash_name_is_a_hub_id(ref: str) -> None:
    assert not looks_local(ref)


@pytest.mark.parametrize(
    "ref",
    [
        "/abs/models",
        "./models",
        "~/models",
        "runs/a/b",  # two slashes: a path
        "models",  # no slash: a folder name, not an `org/name` id
        "weights/ControlNetHED.pth",  # a weights file, though it reads like org/name
        "org/model.safetensors",
        "",
    ],
)
def test_paths_and_file_names_are_local(ref: str) -> None:
    assert looks_local(ref)


def test_an_existing_folder_is_local_even_when_named_like_an_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert looks_local("org/name") and not looks_local("org/other")


def test_hub_offline_reads_the_environment_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, offline in (("1", True), ("TRUE", True), (" on ", True), ("0", False), ("", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert hub_offline() is offline
