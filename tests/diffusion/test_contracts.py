"""The generator and condition contracts (difaug.diffusion.contracts, difaug.conditions.ConditionMaker): who implements them, what the shard
task does with an object that does not, and the one batch-then-each condition helper."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _runner_helpers import job, make_dataset, sleep_factory

from difaug.conditions import ConditionInput, ConditionMaker, conditions_or_errors, make_condition
from difaug.core.config import JobConfig, RuntimeConfig
from difaug.core.contracts import check_contract
from difaug.diffusion.contracts import Generator, ReportsWarmup
from difaug.inputs.manifest import Sample
from difaug.testing.standins import SleepGenerator


def test_the_package_implementations_meet_the_contracts(tiny_models: Path) -> None:
    from difaug.diffusion.sampler import AuxGenerator

    sleep = SleepGenerator(1.0, 4)
    assert isinstance(sleep, Generator) and not isinstance(sleep, ReportsWarmup)
    seg = make_condition("seg", resolution=64)
    assert isinstance(seg, ConditionMaker)
    cfg = JobConfig(model=str(tiny_models), condition="seg", steps=1, resolution=64).validate()
    gen = AuxGenerator.from_config(cfg, RuntimeConfig(device="cpu", batch_size=2, compile="off"))
    assert isinstance(gen, Generator) and isinstance(gen, ReportsWarmup)
    assert gen.batch_size == 2 and gen.provenance["device"] == "cpu"


def test_check_contract_names_what_is_missing() -> None:
    class NoProvenance:
        batch_size = 4

        def generate(self, items: Any) -> list:
            return []

    check_contract(SleepGenerator(), Generator, "f")  # no error
    with pytest.raises(TypeError, match=r"NoProvenance.*Generator \(missing: provenance\)"):
        check_contract(NoProvenance(), Generator, "the generator factory")
    with pytest.raises(TypeError, match=r"ConditionMaker \(missing: __call__, fallbacks\)"):
        check_contract(object(), ConditionMaker, "the condition factory")


class _Unfit:
    """A generator factory's result without `provenance`."""

    batch_size = 4

    def generate(self, items: Any) -> list:
        raise AssertionError("never called: the worker refuses the object first")


def _unfit_factory(cfg: JobConfig, runtime: RuntimeConfig) -> _Unfit:
    return _Unfit()


def _no_fallbacks_factory(cfg: JobConfig, runtime: RuntimeConfig) -> Any:
    return lambda batch: [np.zeros((64, 64, 3), np.uint8) for _ in batch]


@pytest.mark.parametrize(
    ("generator_factory", "condition_factory", "message"),
    [
        (_unfit_factory, None, r"generator factory returned _Unfit.*missing: provenance"),
        (sleep_factory(), _no_fallbacks_factory, r"condition factory returned function.*missing: fallbacks"),
    ],
)
def test_a_factory_result_outside_the_contract_fails_before_any_shard_work(
    tmp_path: Path, generator_factory: Any, condition_factory: Any, message: str
) -> None:
    from difaug.inputs.manifest import read_manifest
    from difaug.run.records import ShardRange
    from difaug.run.task import ShardSpec, run_shard

    m = make_dataset(tmp_path / "d", 2)
    samples = read_manifest(m).samples
    spec = ShardSpec(ShardRange(0, 1, 3), tuple(samples), (), str(tmp_path / "out"), "h" * 64)
    with pytest.raises(TypeError, match=message):
        run_shard(spec, job(m, tmp_path / "out"), generator_factory, condition_factory)
    assert not list((tmp_path / "out").rglob("*.parquet"))


def _input(i: int) -> ConditionInput:
    sample = Sample(row=i, sample_id=f"s{i}", image="", mask="", class_id=1, class_name="cat")
    return ConditionInput(sample, np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.uint8))


class _Refuses:
    """Conditions each input as a constant image of its row, except the rows in `bad`."""

    def __init__(self, bad: set[int], error: type[Exception] = ValueError) -> None:
        self.bad, self.error, self.calls = bad, error, []
        self.fallbacks: Counter[str] = Counter()

    def __call__(self, batch: list[ConditionInput]) -> list[np.ndarray]:
        self.calls.append([x.sample.row for x in batch])
        if any(x.sample.row in self.bad for x in batch):
            raise self.error("bad row")
        return [np.full((8, 8, 3), x.sample.row, np.uint8) for x in batch]


def test_conditions_or_errors_tries_the_batch_then_each() -> None:
    inputs = [_input(i) for i in range(4)]
    good = _Refuses(set())
    assert [int(c[0, 0, 0]) for c in conditions_or_errors(good, inputs)] == [0, 1, 2, 3]
    assert good.calls == [[0, 1, 2, 3]]  # one call when the batch is fine

    picky = _Refuses({2})
    out = conditions_or_errors(picky, inputs)
    assert [type(c).__name__ for c in out] == ["ndarray", "ndarray", "ValueError", "ndarray"]
    assert [int(out[i][0, 0, 0]) for i in (0, 1, 3)] == [0, 1, 3]
    assert picky.calls == [[0, 1, 2, 3], [0], [1], [2], [3]]

    single = _Refuses({0})
    assert isinstance(conditions_or_errors(single, inputs[:1])[0], ValueError)
    assert single.calls == [[0]]  # a batch of one is not redone

    with pytest.raises(RuntimeError):  # errors outside `errors` propagate
        conditions_or_errors(_Refuses({1}, RuntimeError), inputs)
    out = conditions_or_errors(_Refuses({1}, RuntimeError), inputs, (ValueError, RuntimeError))
    assert isinstance(out[1], RuntimeError)
