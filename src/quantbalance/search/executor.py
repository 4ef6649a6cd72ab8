"""Where the search's independent evaluations run: in this process, or fanned out on Ray.

An :class:`Executor` maps ``fn(shared, item)`` over items and returns the results in order.
``shared`` is the large, read-only state every call needs (the float model, the data source):
:class:`SerialExecutor` passes it as it is; :class:`RayExecutor` puts it in Ray's object store
once and starts one actor per worker that deserializes it once, so the model is shipped once per
worker, not once per task. Results come back to the caller, which stores them in the search
cache exactly as a serial run does.

Context-local algorithm options (``gptq_options``/``awq_options`` blocks) are captured where
``map`` is called and set again in the workers, so a remote evaluation quantizes as a local one.

Multi-node: start a cluster with ``ray start --head`` on one machine and ``ray start
--address=HEAD:6379`` on the others, then pass ``RayExecutor(address="HEAD:6379")`` (or
``quantbalance search --ray HEAD:6379``). Ray is the optional extra ``quantbalance[ray]``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from quantbalance.algorithms.base import apply_options, options_snapshot
from quantbalance.errors import AssetMissingError, ConfigError
from quantbalance.plan import Plan
from quantbalance.search.cache import Cache, digest
from quantbalance.search.evaluator import PlanEvaluator

log = logging.getLogger(__name__)

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")


@runtime_checkable
class Executor(Protocol):
    """Runs independent calls; ``workers`` says how many run at once."""

    workers: int

    def map(self, fn: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any) -> list[Any]:
        """``[fn(shared, item) for item in items]``, possibly in parallel, results in order.

        Args:
            fn: a module-level function (it is pickled for remote workers).
            items: the inputs, one call each.
            shared: read-only state every call receives (sent once per worker).

        Returns:
            The results, in the order of ``items``.
        """
        ...


class SerialExecutor:
    """One call after another in this process (the default; no copy of ``shared``)."""

    workers = 1

    def map(self, fn: Callable[[S, T], R], items: Sequence[T], shared: S) -> list[R]:
        """See :meth:`Executor.map`.

        Example:
            >>> SerialExecutor().map(lambda s, x: s + x, [1, 2], 10)
            [11, 12]
        """
        return [fn(shared, x) for x in items]


def _ray() -> Any:
    try:
        import ray  # deferred: ray is an optional extra
    except ImportError:
        raise AssetMissingError(
            "executor='ray' needs the PyPI package 'ray'; install it with: "
            "pip install 'quantbalance[ray]'"
        ) from None
    return ray


class _Worker:
    """A Ray actor's state: the shared object, deserialized once, and the thread count."""

    def __init__(self, shared: Any, threads: int, options: dict[str, Any]) -> None:
        torch.set_num_threads(threads)
        apply_options(options)
        self.shared = shared

    def run(self, fn: Callable[[Any, Any], Any], item: Any) -> Any:
        """One call of ``fn`` on the shared object."""
        return fn(self.shared, item)


@functools.cache
def _actor_class() -> Any:
    return _ray().remote(_Worker)


class RayExecutor:
    """Fan calls out to Ray actors, each holding ``shared`` once (see the module docstring).

    Args:
        address: a Ray cluster address (``"auto"``, ``"HEAD:6379"``); None: the running Ray
            session, else a new local one.
        workers: number of actors (default: the cluster's CPUs divided by ``threads``).
        threads: torch threads (and Ray CPUs) per actor.
        init: extra ``ray.init`` keyword arguments (e.g. ``num_cpus`` for a local session).
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        threads: int = 1,
        init: dict[str, Any] | None = None,
    ) -> None:
        if threads < 1 or (workers is not None and workers < 1):
            raise ConfigError(f"RayExecutor needs workers >= 1 and threads >= 1, got "
                              f"{workers}, {threads}")  # fmt: skip
        self.address, self.threads, self._init = address, threads, dict(init or {})
        self._workers = workers

    def _connect(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            env = {"env_vars": {"OMP_NUM_THREADS": str(self.threads)}}
            ray.init(address=self.address, runtime_env=env, log_to_driver=False, **self._init)
        return ray

    @property
    def workers(self) -> int:
        """Actors used per ``map`` (connects to Ray to count CPUs when not given)."""
        if self._workers is None:
            cpus = int(self._connect().cluster_resources().get("CPU", 1))
            self._workers = max(1, cpus // self.threads)
        return self._workers

    def map(self, fn: Callable[[S, T], R], items: Sequence[T], shared: S) -> list[R]:
        """See :meth:`Executor.map` (actors live for this call only).

        Returns:
            The results, in the order of ``items``.
        """
        if not items:
            return []
        ray = self._connect()
        from ray.util import ActorPool  # deferred: ray is an optional extra

        n = min(self.workers, len(items))
        ref = ray.put(shared)  # one copy in the object store; each actor reads it once
        actor = _actor_class().options(num_cpus=self.threads)
        actors = [actor.remote(ref, self.threads, options_snapshot()) for _ in range(n)]
        try:
            pool = ActorPool(actors)
            return list(pool.map(lambda a, x: a.run.remote(fn, x), list(items)))
        finally:
            for a in actors:
                ray.kill(a)
            del ref


def make_executor(executor: str | Executor | None, address: str | None = None) -> Executor:
    """An executor from a name (``serial``, ``ray``), an Executor, or None (serial).

    Args:
        executor: the choice.
        address: the Ray address for ``ray`` (default: ``$QB_RAY_ADDRESS``, else local).

    Returns:
        The executor.

    Example:
        >>> make_executor(None).workers
        1
    """
    if executor is None or executor == "serial":
        return SerialExecutor()
    if executor == "ray":
        return RayExecutor(address=address or os.environ.get("QB_RAY_ADDRESS") or None)
    if is_executor(executor):
        return executor
    raise ConfigError(
        f"executor={executor!r}: accepted 'serial', 'ray' or an object with map(fn, items, "
        "shared) and workers"
    )


def is_executor(obj: Any) -> bool:
    """Whether ``obj`` has an executor's ``map`` and ``workers``, without touching them.

    ``isinstance(obj, Executor)`` reads ``workers``, which :class:`RayExecutor` computes by
    connecting to Ray: checking a configuration must not start a cluster.

    Args:
        obj: any object.

    Returns:
        True for an executor.
    """
    try:
        inspect.getattr_static(obj, "workers")
    except AttributeError:
        return False
    return callable(getattr(type(obj), "map", None))


class MemoryCache(Cache):
    """A :class:`Cache` that also keeps every value it is given in memory.

    Results computed by workers are stored on the driver with ``put``; with the disk cache
    disabled (``root=None``) they would be lost, and the serial loops would compute them again.

    Args:
        root: the cache folder, or None (memory only).
    """

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        super().__init__(root)
        self._mem: dict[str, Any] = {}

    def get(self, kind: str, key: Mapping[str, Any]) -> Any | None:
        """See :meth:`Cache.get` (memory first)."""
        k = digest({"kind": kind, **key})
        return self._mem[k] if k in self._mem else super().get(kind, key)

    def put(self, kind: str, key: Mapping[str, Any], value: Any) -> Any:
        """See :meth:`Cache.put` (memory too)."""
        self._mem[digest({"kind": kind, **key})] = value
        return super().put(kind, key, value)


class _Recorder(Cache):
    """A worker's cache: reads the driver's folder when it can, records puts for the driver."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        super().__init__(root)
        self.puts: list[tuple[str, dict[str, Any], Any]] = []

    def put(self, kind: str, key: Mapping[str, Any], value: Any) -> Any:
        """Record (the driver stores it)."""
        self.puts.append((kind, dict(key), value))
        return value


def _evaluate_plan(
    ev: PlanEvaluator, job: tuple[Plan, dict[str, str]]
) -> list[tuple[str, dict[str, Any], Any]]:
    rec = _Recorder(ev.cache.root)
    dataclasses.replace(ev, cache=rec, log=[]).evaluate_splits(*job)
    return rec.puts


def prefetch(ev: PlanEvaluator, jobs: Sequence[tuple[Plan, dict[str, str]]], run: Executor) -> int:
    """Evaluate Plans on the executor's workers and store the results in ``ev``'s cache.

    The caller's loop then evaluates the same Plans through ``ev`` as before and finds every
    result in the cache, so the log, the points and the Plan are those of a serial run. With a
    :class:`SerialExecutor` nothing is done here (the loop computes as it goes).

    Args:
        ev: the evaluator (its model and sources are sent once per worker).
        jobs: ``(plan, {split: purpose})`` pairs, as ``PlanEvaluator.evaluate_splits`` takes.
        run: the executor.

    Returns:
        The number of cache entries stored.
    """
    if isinstance(run, SerialExecutor) or not jobs:
        return 0
    shared = dataclasses.replace(ev, log=[])
    n = 0
    for puts in run.map(_evaluate_plan, list(jobs), shared):
        for kind, key, value in puts:
            ev.cache.put(kind, key, value)
            n += 1
    log.info("prefetched %d evaluations of %d Plans on %d workers", n, len(jobs), run.workers)
    return n
