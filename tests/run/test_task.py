"""The shard task: two shards in flight per process (overlap, the counters each shard reads,
torch threads), cancelling."""

from __future__ import annotations

import csv
import functools
import itertools
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from difaug.core.config import JobConfig, RuntimeConfig
from difaug.inputs.manifest import read_manifest
from difaug.run import layout, verify
from difaug.run.driver import run
from difaug.run.records import ShardRange, ShardStats
from difaug.run.task import ShardCancelled, ShardSpec, run_shard
from difaug.testing.standins import SleepGenerator, make_dataset, sleep_generator_factory, small_job

# ----------------------------------------------------------------------------- two shards in flight


class _Recorder:
    """What the recording stand-ins saw, shared with the test through `_RECORDERS[token]` (the
    factories must be picklable, so they carry a token rather than the recorder)."""

    def __init__(self, shard_of: dict[str, int]):
        self.shard_of = shard_of
        self.lock = threading.Lock()
        self.batches: list[int] = []  # the shard of each generator batch, in call order
        self.device_threads: list[int] = []  # torch's thread count on the generating thread
        self.both_generating = threading.Event()  # two different shards have had a batch

    def batch(self, items: Sequence[Any]) -> None:
        import torch

        with self.lock:
            self.batches.append(self.shard_of[items[0].sample_id])
            self.device_threads.append(torch.get_num_threads())
            if len(set(self.batches)) >= 2:
                self.both_generating.set()


_RECORDERS: dict[str, _Recorder] = {}


class _RecordingGenerator(SleepGenerator):
    """The sleeping stand-in, recording each batch and reporting a warm-up (`ReportsWarmup`) that
    names the samples of each call: 0.25 s per image, one warning per call."""

    def __init__(self, token: str, ms: float, batch_size: int):
        super().__init__(ms, batch_size)
        self.recorder = _RECORDERS[token]
        self.warmup_seconds = 0.0
        self.warnings: list[str] = []

    def generate(self, items: Sequence[Any]) -> list[Any]:
        self.recorder.batch(items)
        self.warmup_seconds += 0.25 * len(items)
        self.warnings.append("warm-up: " + " ".join(sorted({it.sample_id for it in items})))
        return super().generate(items)


def _recording_factory(cfg: JobConfig, runtime: RuntimeConfig, *, token: str, ms: float = 1.0) -> Any:
    return _RecordingGenerator(token, ms, runtime.batch_size)


def _recorder(manifest: Path, shard_size: int) -> tuple[str, _Recorder]:
    token = uuid.uuid4().hex
    samples = read_manifest(manifest).samples
    _RECORDERS[token] = _Recorder({s.sample_id: (s.row - 1) // shard_size for s in samples})
    return token, _RECORDERS[token]


def _hold_first_marker(monkeypatch: pytest.MonkeyPatch, until: threading.Event) -> dict[int, bool]:
    """Hold the first shard's marker (its last step) until `until` is set, for at most 20 s;
    return shard → whether `until` was set when its marker was written."""
    real, lock, seen = layout.write_marker, threading.Lock(), {}

    def write_marker(out: str, stats: ShardStats) -> None:
        with lock:
            first = not seen
            seen[stats.shard] = until.is_set()
        if first:
            seen[stats.shard] = until.wait(20)
        real(out, stats)

    monkeypatch.setattr(layout, "write_marker", write_marker)
    return seen


def _with_fallback_class(manifest: Path, row: int) -> Path:
    rows = list(csv.DictReader(manifest.open()))
    rows[row - 1]["class_name"] = "flux capacitor"  # no ADE20K mapping: a seg fallback
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def test_the_next_shard_generates_while_the_previous_one_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two shards in flight: the second's batches start before the first's marker is written
    (held here until then; run one shard at a time, that would never happen)."""
    m = make_dataset(tmp_path / "d", 4)
    token, rec = _recorder(m, 2)
    seen = _hold_first_marker(monkeypatch, rec.both_generating)
    j = small_job(m, tmp_path / "out", runtime={"batch_size": 1})  # 4 batches per shard
    s = run(j, generator_factory=functools.partial(_recording_factory, token=token))
    assert s.ok and s.done == 4 and s.images == 8
    assert sorted(seen) == [0, 1] and all(seen.values()), seen
    # One shard at a time on the device: each shard's batches are contiguous.
    changes = sum(a != b for a, b in itertools.pairwise(rec.batches))
    assert changes == 1, rec.batches


def test_fallbacks_and_warmup_are_the_shards_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counters on the shared condition and generator are read around each shard's own stage,
    even while the two shards' tasks overlap."""
    m = _with_fallback_class(make_dataset(tmp_path / "d", 4), row=4)  # in shard 1
    token, rec = _recorder(m, 2)
    _hold_first_marker(monkeypatch, rec.both_generating)  # the two tasks overlap for sure
    out = tmp_path / "out"
    s = run(small_job(m, out), generator_factory=functools.partial(_recording_factory, token=token))
    assert s.ok
    stats = {c.shard.index: c.stats for c in verify.verify_run(out).done if c.stats}
    assert stats[0].fallbacks == {} and stats[1].fallbacks == {"flux capacitor": 1}
    ids = {i: {sid for sid, shard in rec.shard_of.items() if shard == i} for i in (0, 1)}
    for i in (0, 1):
        assert stats[i].seconds["warmup"] == pytest.approx(0.25 * stats[i].images)
        named = {sid for w in stats[i].compile_warnings for sid in w.split()[1:]}
        assert named == ids[i], (i, stats[i].compile_warnings)


def test_torch_threads_follow_each_job_and_are_restored(tmp_path: Path) -> None:
    """The generating thread uses the job's torch thread count, job after job (OpenMP's count is
    per thread), and the run leaves the count as it found it."""
    import torch

    def in_a_new_thread() -> int:  # a new thread starts from the process-wide setting
        got: list[int] = []
        t = threading.Thread(target=lambda: got.append(torch.get_num_threads()))
        t.start()
        t.join()
        return got[0]

    before, process_wide = torch.get_num_threads(), in_a_new_thread()
    m = make_dataset(tmp_path / "d", 4)
    for threads in (1, 2, 1):
        token, rec = _recorder(m, 2)
        j = small_job(m, tmp_path / f"out{threads}-{token}", runtime={"threads_per_worker": threads})
        assert run(j, generator_factory=functools.partial(_recording_factory, token=token)).ok
        assert set(rec.device_threads) == {threads}
    assert (torch.get_num_threads(), in_a_new_thread()) == (before, process_wide)


def test_a_cancelled_shard_stops_and_writes_nothing(tmp_path: Path) -> None:
    m = make_dataset(tmp_path / "d", 4)
    out = tmp_path / "out"
    j = small_job(m, out, shard_size=4, runtime={"batch_size": 1})
    spec = ShardSpec(ShardRange(0, 1, 5), tuple(read_manifest(m).samples), (), str(out), "h" * 64)
    out.mkdir()
    cancel = threading.Event()
    with pytest.raises(ShardCancelled, match="shard 0"):
        run_shard(
            spec,
            j,
            functools.partial(sleep_generator_factory, ms_per_image=50.0),
            progress=lambda index, images: cancel.set(),  # after the first batch
            cancel=cancel,
        )
    assert not layout.shard_path(out, 0).exists() and not layout.marker_path(out, 0).exists()
