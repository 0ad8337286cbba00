"""The models of a shard task: loaded once per worker process from picklable factories, never
shipped through the task graph.

`ModelCache.use` hands a shard the generator and condition of its job (loading them the first
time); `factory_key` says which loaded set a job can reuse. The task uses the models only through
their contracts (`Generator`, `ConditionMaker`); stand-ins for tests and benchmarks are in
`difaug.testing.standins`.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import NamedTuple

from difaug.conditions import ConditionMaker
from difaug.core.config import Job, JobConfig, RuntimeConfig, model_settings
from difaug.core.contracts import check_contract
from difaug.diffusion.contracts import Generator

GeneratorFactory = Callable[[JobConfig, RuntimeConfig], Generator]
ConditionFactory = Callable[[JobConfig, RuntimeConfig], ConditionMaker]
# Scores a batch of aux images on the generator's UNet: (images, masks, class_ids) -> [DriftScore].
DriftScorer = Callable[..., list]


def default_generator_factory(cfg: JobConfig, runtime: RuntimeConfig) -> Generator:
    from difaug.diffusion.sampler import AuxGenerator

    return AuxGenerator.from_config(cfg, runtime)


def default_condition_factory(cfg: JobConfig, runtime: RuntimeConfig) -> ConditionMaker:
    from difaug.conditions import make_condition
    from difaug.diffusion.specs import ModelSpec

    return make_condition(
        cfg.condition,
        style=cfg.condition_style,
        resolution=cfg.resolution,
        # The job's HED weights as named (the `model` bundle's unless `hed_weights` overrides
        # them); difaug.conditions.hed.resolve_hed_weights turns the name into a local file.
        hed_weights=ModelSpec.from_config(cfg).hed_weights,
        device=None if runtime.device == "auto" else runtime.device,
        dtype=None if runtime.dtype == "auto" else runtime.dtype,
        batch_size=runtime.hed_batch_size,
        detect_resolution=cfg.detect_resolution,
    )


def factory_key(generator_factory: GeneratorFactory, condition_factory: ConditionFactory, job: Job) -> str:
    """What identifies a loaded model set: the factories (by value), the job config and the
    runtime settings that change how models load (`model_settings`). Raises TypeError for
    unpicklable factories."""
    try:
        blob = pickle.dumps((generator_factory, condition_factory, job.config, model_settings(job.runtime)))
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise TypeError(
            "generator_factory and condition_factory must be picklable (a module-level function or "
            f"functools.partial of one), since Dask ships them to the workers: {e}"
        ) from e
    return hashlib.sha256(blob).hexdigest()


class LoadedModels(NamedTuple):
    generator: Generator
    condition: ConditionMaker
    load_seconds: float  # 0.0 when the set was already loaded


class ModelCache:
    """One model set per process, shared by the shards of one job.

    Another job's key replaces the set, but only once no shard of the old key is in flight (the
    new job's shard waits), so models a running shard uses are never freed under it. Shards of
    one key never wait here."""

    def __init__(self) -> None:
        self._loaded: dict[str, tuple[Generator, ConditionMaker]] = {}
        self._in_use: Counter[str] = Counter()  # key → shards of this process using its models
        self._changed = threading.Condition()  # guards both; notified when a shard lets go

    @contextlib.contextmanager
    def use(
        self, job: Job, generator_factory: GeneratorFactory, condition_factory: ConditionFactory
    ) -> Iterator[LoadedModels]:
        """The job's models, in use until the block ends; loaded once per process and key."""
        key = factory_key(generator_factory, condition_factory, job)
        with self._changed:
            self._changed.wait_for(lambda: all(k == key for k in self._in_use))
            load_s = 0.0
            if key not in self._loaded:
                self._loaded.clear()
                _free_device_memory()
                t0 = time.perf_counter()
                self._loaded[key] = _load(job, generator_factory, condition_factory)
                load_s = time.perf_counter() - t0
            self._in_use[key] += 1
        try:
            yield LoadedModels(*self._loaded[key], load_s)
        finally:
            with self._changed:
                self._in_use[key] -= 1
                if not self._in_use[key]:
                    del self._in_use[key]
                self._changed.notify_all()

    def drift_scorer(self, generator: Generator, cfg: JobConfig) -> DriftScorer | None:
        """Drift scoring on the generator's loaded UNet (built once per process and generator,
        under the cache's lock), or None when the job does not score or the generator is a
        stand-in."""
        from difaug.diffusion import diffseg

        with self._changed:
            scorer = diffseg.for_generator(generator, cfg)
        return None if scorer is None else scorer.drift_scores


def _load(
    job: Job, generator_factory: GeneratorFactory, condition_factory: ConditionFactory
) -> tuple[Generator, ConditionMaker]:
    generator = generator_factory(job.config, job.runtime)
    check_contract(generator, Generator, "the generator factory")
    condition = condition_factory(job.config, job.runtime)
    check_contract(condition, ConditionMaker, "the condition factory")
    return generator, condition


def _free_device_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
