"""`difaug models warmup`: the job as `difaug generate` takes it (its flags, its YAML), refused in
one line, before any model loads, when there is nothing to compile; and the line `difaug generate`
ends with (the compile cache its workers used, each worker's warm-up).

The warm-up's own work (the shapes, the compile cache a fresh process uses) is tested on the
library in tests/run/test_warmup.py: through the CLI it would compile the whole tiny generator
with inductor, about two minutes on this machine.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from _cli import command_options
from _runner_helpers import job, make_dataset, sleep_factory, write_job_file
from rich.console import Console
from typer.testing import CliRunner

from difaug.cli import app
from difaug.cli._progress import GenerateView, warmup_line
from difaug.run import driver


def test_warmup_takes_generates_flags() -> None:
    warmup, generate = command_options("models", "warmup"), command_options("generate")
    assert warmup <= generate
    assert {"--config", "--manifest", "--out", "--compile-cache", "--device", "--batch-size"} <= warmup
    assert {"--vae-batch", "--compile-mode", "--resolution", "--score", "--limit"} <= warmup
    assert {"--compile-min-images", "--max-aspect"} <= warmup  # whether it compiles, which rows
    assert "--workers" not in warmup and "--retries" not in warmup  # the cluster's: no shape depends on them


@pytest.fixture
def job_file(tmp_path: Path, tiny_models: Path) -> Path:
    keys = f"out: {tmp_path / 'out'}\nmodel: {tiny_models}\nresolution: 64\nexecution:\n  device: cpu\n  compile: 'on'\n"
    return write_job_file(tmp_path, make_dataset(tmp_path / "d", 2), keys)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (
            ["--cache-interval", "2"],
            "cache_interval > 1 runs eager (the cached branch is data-dependent); set cache_interval: 1",
        ),
        (["--no-compile"], "compile is off; set compile: on (--compile)"),
        (["--compile-min-images", "0", "--offload"], "compile and offload cannot be combined"),
        (["--manifest", "nothere.csv"], "manifest not found: nothere.csv"),
    ],
)
def test_warmup_refuses_in_one_line_before_loading_anything(
    job_file: Path, tmp_path: Path, flags: list[str], says: str
) -> None:
    cache = tmp_path / "cache"
    res = CliRunner().invoke(
        app, ["models", "warmup", "--config", str(job_file), "--compile-cache", str(cache), *flags]
    )
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and says in " ".join(res.output.split())
    assert not cache.exists()


def test_warmup_under_compile_auto_says_why_the_workers_would_not_compile(job_file: Path) -> None:
    job_file.write_text(job_file.read_text().replace("compile: 'on'", "compile: auto"))
    wide = {"COLUMNS": "300"}
    res = CliRunner().invoke(app, ["models", "warmup", "--config", str(job_file)], env=wide)
    assert res.exit_code == 2
    assert "compile auto leaves a job of 8 images eager (compile_min_images is 1000)" in res.output
    res = CliRunner().invoke(
        app, ["models", "warmup", "--config", str(job_file), "--compile-min-images", "0"], env=wide
    )
    assert res.exit_code == 2
    assert (
        "compile auto compiles on CUDA only and the device here is cpu; run this where the workers run"
        in res.output
    )


# ----------------------------------------------------------------------------- generate's last line


def test_generate_ends_naming_the_compile_cache_and_each_workers_warm_up(tmp_path: Path) -> None:
    """The view collects what the driver's events say (the workers' cache folder, each shard's
    warm-up and worker) and `generate` prints `warmup_line` under its summary: nothing for eager workers."""
    m = make_dataset(tmp_path / "d", 4)
    for compile, shown in (("on", True), ("off", False)):
        view = GenerateView(Console(file=io.StringIO()), bar=False)
        j = job(m, tmp_path / compile, runtime={"compile": compile, "device": "cpu"})
        assert driver.run(j, generator_factory=sleep_factory(), on_event=view).ok
        line = warmup_line(view.compile_cache, view.warmups)
        if shown:
            cache = tmp_path / "on" / ".difaug-compile-cache"
            assert line.startswith(f"compile cache {cache} · warm-up of 1 worker(s): ")
            assert line.endswith(f":{os.getpid()} 0.0 s")  # the stand-in reports no warm-up
        else:
            assert line == ""
    many = {f"node{i}:1": float(i) for i in range(1, 9)}
    assert (
        warmup_line("/c", many)
        == "compile cache /c · warm-up of 8 worker(s): min 1.0 s, median 5.0 s, max 8.0 s"
    )
    two = {"b:2": 17.44, "a:1": 16.9}
    assert warmup_line("/c", two) == "compile cache /c · warm-up of 2 worker(s): a:1 16.9 s, b:2 17.4 s"
