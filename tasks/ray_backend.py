"""Ray as the worker pool of collection and evaluation (``backend=ray``).

Rollout workers are Ray actors: each builds its own MuJoCo world and renderer once and then runs
the work items it is sent (an episode index of a collection run, a batch of evaluation episodes).
:func:`session` joins the cluster at ``address`` (``ray.init(address=...)``: a head node started
with ``ray start --head``) or, with no address, starts a local one sized to the workers, and shuts
down only what it started.

Fault tolerance is Ray's: actors are created with ``max_restarts=-1`` and their calls with
``max_task_retries=-1``, so a worker process that dies (killed, out of memory, its node lost) is
restarted and the calls it had not answered are run again on the new process. Work items are pure
functions of their arguments (a collection episode is a function of its run and index, see
``tasks/collect.py``), so a rerun returns the same bytes, and :func:`ordered_map` hands results back
in item order: the writer sees exactly the sequence the process backend gives, nothing twice and
nothing missing.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

IN_FLIGHT_PER_WORKER = 2  # calls queued on each actor: one running, one waiting (no idle gap between)
LOCAL_OBJECT_STORE_BYTES = 256 << 20  # a local cluster's object store: episodes pass through it one batch at a time
# what workers must see as the driver does
ENV_VARS = ("MUJOCO_GL", "PYOPENGL_PLATFORM", "OMP_NUM_THREADS", "LP_NUM_THREADS")


@contextlib.contextmanager
def session(address: str | None, workers: int) -> Iterator[None]:
    """Ray connected for the block: to the cluster at ``address``, or a local one with ``workers``
    CPUs when ``address`` is None (shut down afterwards; a connection made before is kept)."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        env = {k: os.environ[k] for k in ENV_VARS if k in os.environ}
        env.setdefault("MUJOCO_GL", "egl")
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        # A local cluster's processes inherit this process's environment (ENV_VARS included), so no
        # runtime_env: with one, Ray starts fresh workers for the actors (~0.8 s more to the first
        # episode) instead of handing them the workers it prestarted at init.
        os.environ.setdefault("MUJOCO_GL", "egl")
        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        )
    try:
        yield
    finally:
        ray.shutdown()


def actors(cls: type, workers: int, *args: Any, name_prefix: str | None = None) -> list[Any]:
    """``workers`` actors of ``cls(*args)``, restarted when they die, their calls retried.
    ``name_prefix``: actors are named ``<prefix><k>`` (``ray.get_actor`` finds them)."""
    import ray

    remote: Any = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(cls)
    return [remote.options(name=f"{name_prefix}{k}" if name_prefix else None).remote(*args) for k in range(workers)]


def ordered_map(
    workers: list[Any], call: Callable[[Any, Any], Any], items: Iterable[Any], in_flight: int = IN_FLIGHT_PER_WORKER
) -> Iterator[Any]:
    """The results of ``call(worker, item)`` (an actor method call: ``lambda w, i: w.run.remote(i)``)
    for every item, in item order. Item k goes to worker k mod n, and at most ``in_flight`` calls
    per worker are outstanding."""
    import ray

    pending: collections.deque[Any] = collections.deque()
    for k, item in enumerate(items):
        pending.append(call(workers[k % len(workers)], item))
        if len(pending) >= in_flight * len(workers):
            yield ray.get(pending.popleft())
    while pending:
        yield ray.get(pending.popleft())


def worker_pids(name_prefix: str, workers: int) -> list[int]:
    """The process ids of the named actors (``actors(..., name_prefix=)``): what a test kills."""
    import ray

    handles: list[Any] = [ray.get_actor(f"{name_prefix}{k}") for k in range(workers)]
    pids: list[int] = ray.get([h.pid.remote() for h in handles])
    return pids
