"""Which backend steps the sub-envs: the one place that chooses.

``num_workers=0`` steps them in this process. With workers, ``backend`` says what a worker is:
``"process"`` (the default), a process on this machine (:class:`~npc_wrapper.workers.WorkerBackend`),
or ``"ray"``, a Ray actor anywhere on a Ray cluster (:class:`~npc_wrapper.ray_workers.RayBackend`).
NPC inference stays batched in this process with every backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from npc_wrapper.agents import AgentLayout
from npc_wrapper.arguments import check_timeout
from npc_wrapper.workers import Backend, EnvFn, InProcessBackend, WorkerBackend

__all__ = ["BACKENDS", "check_backend", "make_backend"]

#: The values ``backend`` takes.
BACKENDS = ("process", "ray")


def check_backend(
    backend: Any,
    num_workers: int,
    start_method: str | None = None,
    ray_address: str | None = None,
    worker_resources: Mapping[str, Any] | None = None,
    step_timeout: Any = None,
    prefix: str = "",
) -> float | None:
    """Raise, with one line naming the argument, unless the backend arguments go together; return
    ``step_timeout`` as checked (seconds as a ``float``, or ``None``).

    :param prefix: qualifies the names in the messages (``"trainer."`` for the CLI's keys)
    :raises TypeError: a ``step_timeout`` that is not a number
    :raises ValueError: an unknown backend, ``backend="ray"`` with no workers, an option of the
        other backend, or a ``step_timeout`` that is not positive or has no workers to bound
    :raises ImportError: ``backend="ray"`` without Ray installed (naming the extra to install)

    Example::

        >>> check_backend("process", 2)
        >>> check_backend("ray", 0, prefix="trainer.")
        Traceback (most recent call last):
        ...
        ValueError: trainer.backend='ray' needs trainer.num_workers >= 1 (each worker is a Ray actor ...
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(
            f"{prefix}backend={backend!r} is not a backend; use one of {', '.join(map(repr, BACKENDS))} "
            "(process: worker processes on this machine; ray: Ray actors, on a Ray cluster's nodes)"
        )
    timeout = check_timeout(step_timeout, f"{prefix}step_timeout")
    if timeout is not None and num_workers == 0:
        raise ValueError(
            f"{prefix}step_timeout={timeout} needs {prefix}num_workers >= 1: an env stepping in this process "
            f"cannot be interrupted; set {prefix}num_workers, or drop {prefix}step_timeout"
        )
    if backend == "ray":
        if num_workers < 1:
            raise ValueError(
                f"{prefix}backend='ray' needs {prefix}num_workers >= 1 (each worker is a Ray actor stepping "
                f"num_envs / num_workers envs), got {prefix}num_workers={num_workers}; "
                f"{prefix}num_workers=0 steps the envs in this process"
            )
        if start_method is not None:
            raise ValueError(
                f"{prefix}start_method={start_method!r} applies to {prefix}backend='process' only (Ray "
                f"starts its own worker processes); leave {prefix}start_method out"
            )
        ray_workers = _ray_workers()
        ray_workers.check_worker_resources(worker_resources, prefix)
        ray_workers.require_ray()
        return timeout
    for name, value in (("ray_address", ray_address), ("worker_resources", worker_resources)):
        if value is not None:
            raise ValueError(
                f"{prefix}{name}={value!r} applies to {prefix}backend='ray' only; pass {prefix}backend='ray' "
                f"(with {prefix}num_workers >= 1) or leave {prefix}{name} out"
            )
    return timeout


def _ray_workers() -> ModuleType:
    """The Ray backend's module, imported only when a Ray backend is asked for: it imports ray, which
    takes about 0.7 s (every ``import npc_wrapper``, worker processes included, would pay it)."""
    import npc_wrapper.ray_workers  # optional: the ray extra

    return npc_wrapper.ray_workers


def make_backend(
    backend: str,
    env_fns: Sequence[EnvFn],
    probe: Any,
    layout: AgentLayout,
    num_workers: int,
    reset_when_training_agents_dead: bool,
    start_method: str | None = None,
    ray_address: str | None = None,
    worker_resources: Mapping[str, Any] | None = None,
    step_timeout: float | None = None,
) -> Backend:
    """The backend for these arguments (checked first with :func:`check_backend`).

    :param probe: the env ``env_fns[0]`` built to read the layout: the first sub-env in this process,
        closed when the envs run elsewhere
    :param step_timeout: seconds a worker may take to answer one step (``None``: no bound for processes,
        :data:`~npc_wrapper.ray_workers.STEP_TIMEOUT_S` for Ray actors)
    """
    if num_workers == 0:
        envs = [probe] + [fn() for fn in env_fns[1:]]
        return InProcessBackend(envs, layout, reset_when_training_agents_dead)
    probe.close()
    if backend == "ray":
        return _ray_workers().RayBackend(
            env_fns, num_workers, layout, reset_when_training_agents_dead, ray_address, worker_resources,
            timeout_s=step_timeout,
        )
    return WorkerBackend(
        env_fns, num_workers, layout, reset_when_training_agents_dead, start_method, step_timeout
    )
