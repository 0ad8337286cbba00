"""`difaug generate`'s flags are the config fields' (`difaug.core.config.setting`): one per field
that has a flag, each reaching the job it names, and no other."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import pytest
from _cli import command_options
from _configs import CHANGED_JOB, CHANGED_RUNTIME
from typer.testing import CliRunner

from difaug.cli import app
from difaug.cli.generate import job_flags, runtime_flags
from difaug.core.config import Job, JobConfig, RuntimeConfig, cli_flag
from difaug.core.errors import DifaugError

# The verb's own options, beside the config fields' flags.
OWN_OPTIONS = {"--config", "--manifest", "-m", "--out", "-o", "--limit", "--overwrite", "--no-overwrite"}
OWN_OPTIONS |= {"--force-unlock", "--help"}


def test_options_are_exactly_the_fields_with_a_flag_and_the_verbs_own() -> None:
    from_fields = set()
    for f in (*fields(JobConfig), *fields(RuntimeConfig)):
        if (flag := cli_flag(f)) is not None:
            from_fields |= set(flag.split("/"))
    assert {"--hed-batch", "--prepare-threads", "--compile-min-images"} <= from_fields
    assert command_options("generate") | {"--help"} == from_fields | OWN_OPTIONS


def test_flag_tables_name_the_field_they_set() -> None:
    keys = {f.name for f in (*fields(JobConfig), *fields(RuntimeConfig))}
    tables = {**job_flags(), **runtime_flags()}
    assert {flag.key for flag in tables.values()} == {k for k in keys if k != "slurm"} | {
        "limit",
        "overwrite",
    }
    assert all(flag.help for flag in tables.values())


def _arguments(values: dict[str, object]) -> list[str]:
    by_name = {f.name: f for f in (*fields(JobConfig), *fields(RuntimeConfig))}
    args: list[str] = []
    for name, value in values.items():
        flag = cli_flag(by_name[name])
        if flag is None:
            continue
        if "/" in flag:  # a switch: its own spelling for each value
            on, off = flag.split("/")
            args.append(on if value in (True, "on") else off)
        else:
            args += [flag, str(value)]
    return args


@pytest.fixture
def resolved(monkeypatch: pytest.MonkeyPatch) -> list[Job]:
    """The job `difaug generate` resolved from its arguments; the run itself is not started."""
    import difaug.core.config

    jobs: list[Job] = []
    real = difaug.core.config.resolve_job

    def resolve_job(*args: object, **kwargs: object) -> Job:
        jobs.append(real(*args, **kwargs))
        raise DifaugError("stopped before the run")

    monkeypatch.setattr(difaug.core.config, "resolve_job", resolve_job)
    return jobs


def test_every_flag_reaches_the_job(resolved: list[Job], tmp_path: Path) -> None:
    args = ["generate", "-m", "m.csv", "-o", str(tmp_path / "out"), "--limit", "3", "--overwrite"]
    res = CliRunner().invoke(app, [*args, *_arguments(CHANGED_JOB), *_arguments(CHANGED_RUNTIME)])
    assert res.exit_code == 2 and "stopped before the run" in res.output, res.output
    (job,) = resolved
    assert asdict(job.config) == CHANGED_JOB
    flagged = {k: v for k, v in CHANGED_RUNTIME.items() if k != "slurm"}
    assert {k: v for k, v in asdict(job.runtime).items() if k != "slurm"} == {**flagged, "compile": False}
    assert (job.limit, job.overwrite, job.manifest) == (3, True, "m.csv")


def test_flags_override_the_yaml_and_unset_flags_leave_it(resolved: list[Job], tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(
        "hed_batch: 3\nexecution:\n  prepare_threads: 5\n  compile_min_images: 7\n", encoding="utf-8"
    )
    args = ["generate", "--config", str(config), "-m", "m.csv", "-o", str(tmp_path / "out")]
    CliRunner().invoke(app, [*args, "--compile-min-images", "50"])
    (job,) = resolved
    assert (job.runtime.hed_batch, job.runtime.prepare_threads, job.runtime.compile_min_images) == (3, 5, 50)
