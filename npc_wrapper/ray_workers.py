"""Stepping sub-envs in Ray actors, on one machine or across a Ray cluster's nodes.

Each worker is a Ray actor that holds a :class:`~npc_wrapper.workers.JointBatchEnv`, the batch object
the process backend's workers hold, and runs whichever of its methods the backend names, returning
what it returns: for ``step`` and ``reset``, the batch's fixed-layout buffers as numpy arrays. The
backend copies them into its own :class:`~npc_wrapper.joint_env.JointBuffers` (arrays that come out
of Ray's object store are read-only views, one per worker), so the engine reads one array per buffer
over all envs, as with the other backends. NPC inference never leaves this process.

The workers are placed through one placement group (one bundle of ``worker_resources`` per worker,
``SPREAD`` over the nodes). Ray is optional: ``pip install 'npc-wrapper[ray]'``.

Who starts Ray: if this process is already connected (the user called ``ray.init``), the backend
uses that connection and leaves it alone. Otherwise it connects itself, to ``ray_address`` or else
``RAY_ADDRESS``, or else starts a private local Ray (``ray.init(address="local")``; pass
``ray_address="auto"`` to join a cluster started with ``ray start`` on this machine), and
disconnects (stopping a local Ray it started) when the last backend using that connection closes.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import cloudpickle
import numpy as np

from npc_wrapper.agents import AgentLayout
from npc_wrapper.joint_env import JointBuffers
from npc_wrapper.workers import (
    Backend,
    EnvFn,
    JointBatchEnv,
    _EnvOpError,
    check_worker_split,
    env_only_layout,
)

try:  # optional: the ray extra
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
except ImportError:  # pragma: no cover - exercised in a subprocess without ray
    ray = None

__all__ = [
    "RayBackend",
    "RAY_EXTRA",
    "DEFAULT_WORKER_RESOURCES",
    "STEP_TIMEOUT_S",
    "START_TIMEOUT_S",
    "require_ray",
    "check_worker_resources",
    "wait_for_nodes",
]

#: How to install Ray for this package.
RAY_EXTRA = "pip install 'npc-wrapper[ray]'"
#: What each worker reserves when ``worker_resources`` is not given.
DEFAULT_WORKER_RESOURCES: dict[str, float] = {"CPU": 1.0}
#: A call to the workers (one vector step, a reset, an env method) that takes longer is treated as a hang.
STEP_TIMEOUT_S = 300.0
#: Time to place the workers, start them and build their envs.
START_TIMEOUT_S = 300.0


def require_ray() -> None:
    """Raise ``ImportError`` naming the extra unless Ray can be imported."""
    if ray is None:
        raise ImportError(f"backend='ray' needs the ray package, which is not installed: {RAY_EXTRA}")


def check_worker_resources(resources: Mapping[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """``resources`` (Ray resources one worker reserves) checked, or :data:`DEFAULT_WORKER_RESOURCES`.

    :param prefix: qualifies the name in errors (``"trainer."`` for the CLI's keys)
    :raises ValueError: unless it maps resource names to finite amounts >= 0, at least one of them > 0

    Example::

        >>> check_worker_resources(None), check_worker_resources({"CPU": 2, "GPU": 0.25})
        ({'CPU': 1.0}, {'CPU': 2.0, 'GPU': 0.25})
    """
    if resources is None:
        return dict(DEFAULT_WORKER_RESOURCES)
    what = f"{prefix}worker_resources"
    if not isinstance(resources, Mapping):
        raise ValueError(
            f"{what} must map Ray resource names to amounts per worker, e.g. {{'CPU': 1}}, "
            f"got {type(resources).__name__} {resources!r}"
        )
    out: dict[str, float] = {}
    for name, amount in resources.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what}: resource names must be non-empty strings, got {name!r}")
        ok = isinstance(amount, (int, float, np.integer, np.floating)) and not isinstance(amount, bool)
        if not ok or not math.isfinite(amount) or amount < 0:
            raise ValueError(f"{what}[{name!r}] must be a finite number >= 0, got {amount!r}")
        out[name] = float(amount)
    if not any(v > 0 for v in out.values()):
        raise ValueError(
            f"{what}={resources!r} reserves nothing; give each worker a positive amount of some resource, "
            "e.g. {'CPU': 1} (Ray places the workers by what they reserve)"
        )
    return out


# ------------------------------------------------------------------------------- the connection
class _Connection:
    """The Ray connection this module made (if any): its generation and how many users it has open."""

    generation = 0
    made = False
    users = 0
    #: Which connection it is (cluster address, job): one the user made after shutting ours down is not ours.
    identity: tuple[str, str] | None = None


def _identity() -> tuple[str, str]:
    context = ray.get_runtime_context()
    return context.gcs_address, context.get_job_id()


_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _address_of(target: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` or ``ray://host:port`` address; ``None`` for other forms."""
    rest = target.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _same_cluster(address: str, current: str) -> bool:
    """Whether ``address`` names the cluster at ``current`` (Ray reads a loopback host as this node's IP)."""
    a, b = _address_of(address), _address_of(current)
    if a is None or b is None:
        return address == current
    return a[1] == b[1] and (a[0] == b[0] or a[0] in _LOOPBACK or b[0] in _LOOPBACK)


def _connect(address: str | None) -> int | None:
    """Use this process's Ray connection, or make one (see the module's docstring).

    :return: a token to hand to :func:`_release` when done, if the connection is one this module made
    """
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address not in (None, "auto") and not _same_cluster(address, current):
            raise ValueError(
                f"ray_address={address!r}, but this process is already connected to the Ray cluster at "
                f"{current}: leave ray_address out to use that cluster, or ray.shutdown() first"
            )
        if not _Connection.made or _identity() != _Connection.identity:
            _Connection.made = False
            return None
        _Connection.users += 1
        return _Connection.generation
    given = address if address is not None else os.environ.get("RAY_ADDRESS") or None
    target = given or "local"
    where = "ray_address" if address is not None else "RAY_ADDRESS"
    hostport = _address_of(target) if target not in ("local", "auto") else None
    if hostport is not None:
        # ray.init retries an address where nothing listens for minutes; a refused connection says it now.
        try:
            socket.create_connection(hostport, timeout=10).close()
        except OSError as e:
            raise ConnectionError(
                f"cannot reach the Ray cluster at {where}={target!r} ({type(e).__name__}: {e}); start it "
                "(ray start --head) or fix the address"
            ) from e
    ray.init(address=target)
    _Connection.generation += 1
    _Connection.made = True
    _Connection.users = 1
    _Connection.identity = _identity()
    return _Connection.generation


def _release(token: int | None) -> None:
    """A user of this module's connection is done: disconnect (stopping a local Ray) after the last.

    A token of an earlier connection (the user shut Ray down and a new one was made since) does nothing.
    """
    if token is None or not _Connection.made or token != _Connection.generation:
        return
    _Connection.users -= 1
    if _Connection.users <= 0:
        _Connection.made = False
        _Connection.users = 0
        if ray.is_initialized():
            ray.shutdown()


def wait_for_nodes(
    count: int, address: str | None = None, timeout_s: float = 600.0, poll_s: float = 2.0
) -> int:
    """Block until the Ray cluster has ``count`` live nodes; return how many it has.

    For a cluster whose nodes join one by one (``ray start --address`` on each): the workers' placement
    group is spread over the nodes present when it is made, so the learner should wait for all of them.

    :param count: nodes to wait for (the head counts)
    :param address: the cluster (as ``ray_address``; ``None``: this process's connection, or ``RAY_ADDRESS``)
    :param timeout_s: give up after this long
    :param poll_s: seconds between looks
    :raises TimeoutError: naming how many nodes joined
    """
    require_ray()
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    token = _connect(address)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            alive = sum(1 for node in ray.nodes() if node.get("Alive"))
            if alive >= count:
                return alive
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"only {alive} of {count} Ray nodes joined the cluster at "
                    f"{ray.get_runtime_context().gcs_address} within {timeout_s:g} s; check that each worker "
                    "node ran 'ray start --address <head>:<port>' and can reach the head"
                )
            time.sleep(poll_s)
    finally:
        _release(token)


# ------------------------------------------------------------------------------------ the actor
class _BatchActor:
    """A Ray actor holding one worker's :class:`JointBatchEnv`; runs its methods by name.

    What a method raises comes back as an :class:`_EnvOpError` value, as from the process backend's
    workers, so the backend raises the sub-env's own exception and the actor lives on.

    :param payload: the worker's ``JointBatchEnv``, cloudpickled (unpickled in :meth:`start`, so a
        package missing on this node is reported with the node's name)
    """

    def __init__(self, payload: bytes) -> None:
        self._payload = payload
        self.batch: JointBatchEnv | None = None

    def start(self) -> tuple[dict[str, str], _EnvOpError | None]:
        """Unpickle the batch and build its envs; return where this actor runs and what failed."""
        where = {"node_ip": ray.util.get_node_ip_address(), "host": socket.gethostname(),
                 "node_id": ray.get_runtime_context().get_node_id()}
        try:
            self.batch = cloudpickle.loads(self._payload)
            self.batch._build()  # now rather than at the first reset: a bad env fails the construction
        except Exception as e:  # noqa: BLE001 - re-raised by the backend
            return where, _EnvOpError(e)
        return where, None

    def run(self, method: str, args: tuple = (), kwargs: dict[str, Any] | None = None) -> Any:
        """``batch.<method>(*args, **kwargs)``, or what it raised as an :class:`_EnvOpError`."""
        try:
            return getattr(self.batch, method)(*args, **(kwargs or {}))
        except Exception as e:  # noqa: BLE001 - re-raised by the backend
            return _EnvOpError(e)


def _env_error(result: Any) -> _EnvOpError | None:
    """The sub-env error a batch method returned: as itself, or in the info dict ending a gym-style tuple."""
    if isinstance(result, _EnvOpError):
        return result
    info = result[-1] if isinstance(result, tuple) and result else None
    error = info.get("error") if isinstance(info, dict) else None
    return error if isinstance(error, _EnvOpError) else None


def _death_cause(error: BaseException) -> str:
    """Ray's reason for a failed call, on one line (an actor's death: from 'The actor is dead because')."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(error, ray.exceptions.RayActorError):
        return f"{type(cause).__name__}: {' '.join(str(cause).split())}"
    text = " ".join(str(error).split())
    start = text.find("The actor is dead because")
    return text[start:] if start >= 0 else f"{type(error).__name__}: {text}"


# ---------------------------------------------------------------------------------- the backend
class RayBackend(Backend):
    """Sub-envs split evenly over ``num_workers`` Ray actors, spread over the cluster's nodes.

    :param env_fns: one factory per sub-env; they travel to the actors cloudpickled
    :param num_workers: actors; must divide ``len(env_fns)``
    :param layout: where each agent lives in the buffers
    :param reset_when_training_agents_dead: reset an env as soon as no training agent is alive
    :param address: the Ray cluster to connect to (``None``: see the module's docstring)
    :param worker_resources: Ray resources each actor reserves (``None``: ``{"CPU": 1}``)
    :param timeout_s: a call to the workers that takes longer fails (``None``: :data:`STEP_TIMEOUT_S`)
    """

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        num_workers: int,
        layout: AgentLayout,
        reset_when_training_agents_dead: bool,
        address: str | None = None,
        worker_resources: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        require_ray()
        n = len(env_fns)
        check_worker_split(n, num_workers)
        if num_workers < 1:
            raise ValueError(f"backend='ray' needs num_workers >= 1 (one Ray actor each), got {num_workers}")
        resources = check_worker_resources(worker_resources)
        self.num_envs, self.num_workers, self.layout = n, num_workers, layout
        self._per = n // num_workers
        self._timeout_s = timeout_s
        self.buffers = JointBuffers.allocate(layout, (n,))
        self._arrays = self.buffers.as_arrays()  # the same memory, as the dtypes the workers send
        self._broken: str | None = None
        self._closed = False
        self._connection: int | None = None  # the token of a connection this module made for it
        self.actors: list[Any] = []
        self.placement_group: Any = None
        #: Where each worker runs: ``node_ip``, ``host`` and ``node_id``, filled once the workers started.
        self.nodes: list[dict[str, str]] = []
        #: The actors' names (``ray.util.list_named_actors``): ``npc_wrapper-<id>-worker<w>``.
        self.name = f"npc_wrapper-{uuid.uuid4().hex[:12]}"
        env_layout = env_only_layout(layout)
        batches = [
            JointBatchEnv(env_fns[w * self._per:(w + 1) * self._per], w * self._per, env_layout,
                          reset_when_training_agents_dead)
            for w in range(num_workers)
        ]
        try:
            payloads = [cloudpickle.dumps(batch) for batch in batches]
        except Exception as e:
            raise ValueError(
                f"the env factory cannot be sent to the Ray workers ({type(e).__name__}: {e}): it must "
                "pickle with cloudpickle, with all it captures (a lock, an open file or a live env does not)"
            ) from e
        self._connection = _connect(address)
        try:
            self._start(payloads, resources)
        except BaseException:
            self.close()
            raise

    # -------------------------------------------------------------- start
    def _start(self, payloads: list[bytes], resources: dict[str, float]) -> None:
        k = self.num_workers
        self._check_fits(resources)
        self.placement_group = placement_group([dict(resources)] * k, strategy="SPREAD", name=self.name)
        if not self.placement_group.wait(timeout_seconds=START_TIMEOUT_S):
            raise TimeoutError(
                f"the Ray cluster could not place {k} workers of {resources} within {START_TIMEOUT_S:g} s "
                f"(free now: {ray.available_resources()}); other jobs hold the resources, or no node fits one"
            )
        # The actor reserves its whole bundle (Ray's own names for CPU, GPU and memory; the rest as custom).
        special = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}
        options: dict[str, Any] = {"num_cpus": 0}  # an actor given no CPU amount would reserve 1 to start
        options.update({special[r]: v for r, v in resources.items() if r in special})
        custom = {r: v for r, v in resources.items() if r not in special}
        actor_class = ray.remote(_BatchActor)
        self.actors = [
            actor_class.options(
                name=f"{self.name}-worker{w}",
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.placement_group, placement_group_bundle_index=w
                ),
                resources=custom, max_restarts=0, max_task_retries=0, **options,
            ).remote(payload)
            for w, payload in enumerate(payloads)
        ]
        self.nodes = [{"node_ip": "?", "host": "?", "node_id": "?"}] * k  # until they report
        started = self._get([actor.start.remote() for actor in self.actors], "start", START_TIMEOUT_S)
        self.nodes = [where for where, _ in started]
        for w, (_, error) in enumerate(started):
            if error is not None:
                self._raise_env_error(w, error)

    def _check_fits(self, resources: dict[str, float]) -> None:
        """Refuse, at once, workers that the cluster's resources cannot hold (the placement group
        would wait for them forever)."""
        k = self.num_workers
        total = ray.cluster_resources()
        need = {r: v * k for r, v in resources.items()}
        short = {r: v for r, v in need.items() if v > total.get(r, 0.0) + 1e-9}
        fits_one = any(
            all(node["Resources"].get(r, 0.0) + 1e-9 >= v for r, v in resources.items())
            for node in ray.nodes() if node.get("Alive")
        )
        if short or not fits_one:
            has = {r: total.get(r, 0.0) for r in need}
            problem = (f"{k} workers of {resources} need {need}, the cluster has {has} in all" if short
                       else f"no node of the cluster has {resources} for one worker")
            raise ValueError(
                f"the Ray cluster cannot hold the workers: {problem}; lower num_workers, reserve less per "
                "worker with worker_resources (e.g. {'CPU': 0.5}), or add nodes"
            )

    # -------------------------------------------------------------- calls
    def _where(self, w: int) -> str:
        node = self.nodes[w] if w < len(self.nodes) else {}
        return (f"Ray worker {w} (actor {self.name}-worker{w}, node {node.get('node_ip', '?')}, "
                f"host {node.get('host', '?')})")

    def _get(self, refs: list[Any], what: str, timeout_s: float | None = None) -> list[Any]:
        """``ray.get(refs)``, bounded; a worker that died or hangs leaves the backend unusable."""
        timeout = timeout_s if timeout_s is not None else (
            self._timeout_s if self._timeout_s is not None else STEP_TIMEOUT_S)
        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            slow = [w for w, ref in enumerate(refs) if ref not in ready]
            self._broken = f"workers {slow} did not answer {what} within {timeout:g} s"
            raise TimeoutError(
                f"{', '.join(self._where(w) for w in slow)} did not finish {what} within {timeout:g} s (a "
                "hung env, or a node that stopped answering); close() this vector env and make a new one"
            ) from None
        except ray.exceptions.RayError as e:
            w, error = self._culprit(refs, e)
            cause = _death_cause(error)
            self._broken = f"{self._where(w)} failed: {cause}"
            raise RuntimeError(
                f"{self._where(w)} failed during {what}: {cause}; the vector env cannot go on: close() it "
                "and make a new one"
            ) from error
        except BaseException as e:  # an interrupt mid-call: the workers' state is unknown
            self._broken = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise

    def _culprit(self, refs: list[Any], error: BaseException) -> tuple[int, BaseException]:
        """Which worker's call failed, and with what (the first failed one; ``error`` where none is found)."""
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for w, ref in enumerate(refs):
            if ref in ready:
                try:
                    ray.get(ref, timeout=0)
                except ray.exceptions.RayError as e:
                    return w, e
        return 0, error

    def _run(
        self, workers: Sequence[int], method: str, args: Sequence[tuple[tuple, dict[str, Any]]], what: str
    ) -> list[Any]:
        """Run ``method`` of the batches of ``workers`` (``*args[i]``, positional and keyword arguments,
        for ``workers[i]``) and return what each returned, raising a sub-env's error as itself.

        Any method of :class:`JointBatchEnv` runs this way: a new one needs nothing Ray-specific."""
        if self._broken is not None:
            raise RuntimeError(
                f"the Ray workers cannot go on after an earlier failure ({self._broken}); close() this "
                "vector env and make a new one"
            )
        if self._closed:
            raise RuntimeError("the Ray workers are closed; make a new vector env")
        refs = [self.actors[w].run.remote(method, *a) for w, a in zip(workers, args)]
        results = self._get(refs, what)
        for w, result in zip(workers, results):
            error = _env_error(result)
            if error is not None:
                self._raise_env_error(w, error)
        return results

    def _raise_env_error(self, w: int, error: _EnvOpError) -> None:
        """Raise a worker's sub-env error as itself; a missing module also names the node it is missing on."""
        try:
            error.reraise()
        except ImportError as e:
            raise type(e)(
                f"{e} on {self._where(w)}: install the env's package on every node of the Ray cluster, in "
                "the Python environment Ray runs there (the learner's node has it)",
                name=e.name, path=e.path,
            ) from e

    def _copy_buffers(self, results: list[tuple]) -> None:
        """Each worker's buffers (the first item of its result) into this backend's buffers."""
        per = self._per
        for w, result in enumerate(results):
            rows = slice(w * per, (w + 1) * per)
            for key, array in result[0].items():
                self._arrays[key][rows] = array

    # -------------------------------------------------------------- Backend
    def reset(
        self,
        seeds: Sequence[int | None],
        options: Sequence[dict[str, Any] | None],
        mask: np.ndarray | None = None,
    ) -> list[list[dict[str, Any]]]:
        request = JointBatchEnv.reset_options(seeds, options, mask)
        results = self._run(range(self.num_workers), "reset", [((), {"options": request})] * self.num_workers,
                            "reset")
        self._copy_buffers(results)
        return [info for _, infos in results for info in infos["infos"]]

    def step(self, train_actions: np.ndarray, npc_actions: list[np.ndarray], held: np.ndarray):
        per = self._per
        args = []
        for w in range(self.num_workers):
            rows = slice(w * per, (w + 1) * per)
            action = {"train": train_actions[rows], "held": held[rows]}
            action.update({f"npc_{g}": a[rows] for g, a in enumerate(npc_actions)})
            args.append(((action,), {}))
        results = self._run(range(self.num_workers), "step", args, "step")
        self._copy_buffers(results)
        step_infos = [i for result in results for i in result[-1]["infos"]]
        reset_infos = [i for result in results for i in result[-1]["reset_infos"]]
        return step_infos, reset_infos

    def _sub_env_op(self, index: int, op: str, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        index = self._index(index)
        w = index // self._per
        (result,) = self._run([w], "npc_env_call", [((index, op, name, args, kwargs), {})], f"{op} {name!r}")
        return result

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if ray.is_initialized():
            for actor in self.actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone (its node was lost): nothing left to end
                    pass
            if self.placement_group is not None:
                try:
                    remove_placement_group(self.placement_group)
                except Exception:  # noqa: BLE001 - already removed with its cluster
                    pass
        self.actors = []
        token, self._connection = self._connection, None
        _release(token)
