"""`difaug score` on existing runs, and drift scores written during generation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from difaug.run import shards
from difaug.run.layout import SHARDS_DIR
from difaug.run.rescore import ScoreSummary, is_scored, score_run

pytest.importorskip("torch")

from _runner_helpers import job, make_dataset, verified_shards, verified_stats
from _runs import make_run

from difaug.run.driver import run


@pytest.fixture(scope="module")
def diffseg_score(tiny_models: Path):
    """The real DiffSeg scorer on the tiny model's UNet."""
    from difaug.core.config import JobConfig, RuntimeConfig
    from difaug.run.rescore import load_scorer

    return load_scorer(JobConfig(model=str(tiny_models)), RuntimeConfig(device="cpu", dtype="float32"))


class Killed(Exception):
    pass


def counting(scorer, fail_after: int | None = None):
    """The scorer, counting calls; raises `Killed` on call number `fail_after + 1` (a killed run)."""
    calls = []

    def score(images, masks, class_ids):
        if fail_after is not None and len(calls) >= fail_after:
            raise Killed
        calls.append(len(images))
        return scorer(images, masks, class_ids)

    score.calls = calls
    return score


def shard_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in verified_shards(run_dir)}


def without_scores(table: pa.Table) -> pa.Table:
    return table.drop_columns(list(shards.SCORE_COLUMNS))


def test_score_an_old_run_is_resumable_and_idempotent(tmp_path: Path, diffseg_score) -> None:
    synth = make_run(tmp_path, num_aux=2, shard_size=2)  # 3 shards, score columns null
    before = {p.name: shards.read_shard(p) for p in verified_shards(synth.run_dir)}
    assert all(not is_scored(t) for t in before.values())

    # A run killed while scoring its second shard: the first is written and marked.
    first = counting(diffseg_score, fail_after=1)
    with pytest.raises(Killed):
        score_run(synth.run_dir, first, batch_size=8)
    markers = verified_stats(synth.run_dir)
    assert [("score" in m.seconds) for m in markers] == [True, False, False]

    # The rerun scores only the other shards.
    second = counting(diffseg_score)
    summary = score_run(synth.run_dir, second, batch_size=8)
    assert isinstance(summary, ScoreSummary)
    assert summary.skipped_shards == [0] and summary.scored_shards == [1, 2]
    assert summary.rows == sum(t.num_rows for t in before.values()) - before["00000.parquet"].num_rows
    # Every marker vouches for the rewritten file (verified_stats lists verified shards only).
    assert all("score" in m.seconds for m in verified_stats(synth.run_dir))
    assert len(verified_stats(synth.run_dir)) == 3

    for name, old in before.items():
        new = shards.read_shard(synth.run_dir / SHARDS_DIR / name)
        assert without_scores(new).equals(without_scores(old))  # nothing else changed
        iou = new.column("drift_iou").to_pylist()
        assert all(v is not None and 0.0 <= v <= 1.0 for v in iou)
        assert all(n >= 1 for n in new.column("drift_segments").to_pylist())

    # A third call changes nothing and runs no model.
    snapshot = shard_bytes(synth.run_dir)
    third = counting(diffseg_score)
    summary = score_run(synth.run_dir, third, batch_size=8)
    assert third.calls == [] and summary.scored_shards == [] and summary.skipped_shards == [0, 1, 2]
    assert shard_bytes(synth.run_dir) == snapshot


def test_a_shard_its_marker_does_not_vouch_for_is_reported_not_scored(tmp_path: Path) -> None:
    synth = make_run(tmp_path, num_aux=1, shard_size=5)
    path = verified_shards(synth.run_dir)[0]
    table = shards.read_shard(path)
    shards.write_shard(path, table.slice(0, 2))  # changed behind its marker's back

    def never(*_):
        raise AssertionError("a shard its marker does not vouch for must not be scored")

    summary = score_run(synth.run_dir, never)
    assert summary.scored_shards == [] and [u["shard"] for u in summary.unverified] == [0]
    # Two of five rows make a smaller file: its size already differs from the marker's.
    assert "bytes, its marker says" in summary.unverified[0]["reason"], summary.unverified


def test_generate_scores_by_default_and_score_fills_a_run_made_without(
    tmp_path: Path, tiny_models: Path
) -> None:
    data = make_dataset(tmp_path / "data", 3, sizes=[(96, 64), (64, 64)])
    cfg = {"condition": "seg", "model": str(tiny_models), "num_aux": 2, "shard_size": 2}
    scored = run(job(data, tmp_path / "scored", **cfg))
    plain = run(job(data, tmp_path / "plain", score="none", **cfg))
    assert scored.ok and plain.ok

    def table(out: Path) -> pa.Table:
        return pa.concat_tables(shards.read_shard(p) for p in verified_shards(out))

    with_scores, without = table(tmp_path / "scored"), table(tmp_path / "plain")
    assert with_scores.column("drift_iou").null_count == 0
    assert without.column("drift_iou").null_count == without.num_rows
    assert "score" in verified_stats(tmp_path / "scored")[0].seconds

    from difaug.core.config import JobConfig, RuntimeConfig
    from difaug.run.rescore import load_scorer

    scorer = load_scorer(JobConfig(model=str(tiny_models)), RuntimeConfig(device="cpu", dtype="float32"))
    score_run(tmp_path / "plain", scorer, batch_size=4)
    later = table(tmp_path / "plain")
    # Same stored images, same masks → the scores generation wrote (floating-point tolerance:
    # generation scored a whole device batch, `score` its own batches).
    np.testing.assert_allclose(
        np.array(later.column("drift_iou").to_pylist(), float),
        np.array(with_scores.column("drift_iou").to_pylist(), float),
        atol=1e-6,
    )


@pytest.mark.usefixtures("one_torch_thread")
def test_score_loads_no_controlnet_and_gives_the_shard_time_scores_bit_for_bit(tiny_models: Path) -> None:
    """`difaug score` loads the base model alone; its DiffSeg sees the same UNet, VAE and empty-prompt
    embedding as the one built next to the generator at shard time: identical labels and scores."""
    from difaug.core.config import JobConfig, RuntimeConfig
    from difaug.diffusion import diffseg
    from difaug.diffusion.sampler import AuxGenerator
    from difaug.run.rescore import load_scorer

    cfg, rt = JobConfig(model=str(tiny_models)), RuntimeConfig(device="cpu", dtype="float32")
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((40, 56), (64, 48), (64, 64))]
    masks = [np.zeros(img.shape[:2], np.uint8) for img in images]
    for i, m in enumerate(masks):
        m[5 + i : 30, 10:40] = 3
        m[0, :] = 255
    class_ids = [3, 3, 3]

    at_shard_time = diffseg.for_generator(AuxGenerator.from_config(cfg, rt), cfg)
    scorer = load_scorer(cfg, rt)
    alone = scorer.__self__  # the DiffSeg the score verb built
    assert "controlnet" not in alone.pipe.components and at_shard_time.pipe.controlnet is not None
    for want, got in zip(at_shard_time.segment_any(images), alone.segment_any(images), strict=True):
        np.testing.assert_array_equal(got, want)
    want, got = at_shard_time.drift_scores(images, masks, class_ids), scorer(images, masks, class_ids)
    assert got == want and all(s.iou is not None and s.segments >= 1 for s in got)


def test_score_refuses_a_run_in_use(tmp_path: Path) -> None:
    from difaug.core import folderlock
    from difaug.run.layout import GENERATE_COMMAND

    synth = make_run(tmp_path, num_aux=1)

    def never(*_):
        raise AssertionError("a run in use must not be scored")

    lock = folderlock.FolderLock(synth.run_dir, command=GENERATE_COMMAND)
    with lock, pytest.raises(folderlock.LockError, match="in use by difaug generate"):
        score_run(synth.run_dir, never)
