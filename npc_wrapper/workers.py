"""Stepping sub-envs in-process or in worker processes, behind one small interface.

Worker processes reuse Gymnasium's :class:`~gymnasium.vector.AsyncVectorEnv`: it is maintained
with Gymnasium, moves observations through shared memory, re-raises worker exceptions in the main
process and shuts its processes down on ``close``. Each of its workers holds a
:class:`JointBatchEnv`, a batch of :class:`~npc_wrapper.joint_env.JointEnv` seen as one Gymnasium
env whose "observation" is the batch's buffers, so the main process reads every buffer in place
from shared memory with no copy. Autoreset happens inside :class:`JointEnv`, so the
``AsyncVectorEnv`` runs with autoreset disabled.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import inspect
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode
from gymnasium.vector.async_vector_env import AsyncState

from npc_wrapper.agents import AgentLayout
from npc_wrapper.joint_env import JointBuffers, JointEnv, buffer_spaces, env_actions

__all__ = [
    "Backend", "InProcessBackend", "WorkerBackend", "JointBatchEnv", "action_box", "batch_spaces",
    "check_worker_split", "env_only_layout",
]

EnvFn = Callable[[], Any]


class Backend:
    """Steps ``num_envs`` :class:`JointEnv` s; ``buffers`` has a leading env axis."""

    buffers: JointBuffers
    num_envs: int

    def reset(
        self,
        seeds: Sequence[int | None],
        options: Sequence[dict[str, Any] | None],
        mask: np.ndarray | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Reset env ``i`` with ``seeds[i]`` and ``options[i]``, only where ``mask`` is set (default:
        all); return each env's training-agent infos (of its last reset)."""
        raise NotImplementedError

    def step(
        self, train_actions: np.ndarray, npc_actions: list[np.ndarray], held: np.ndarray
    ) -> tuple[list[list[dict[str, Any]]], list[list[dict[str, Any]] | None]]:
        """Step every env, except that env ``i`` with ``held[i]`` only delivers the reset of the last
        step (NEXT_STEP autoreset, see :meth:`JointEnv.deliver_reset`); return each env's
        training-agent step infos and, for envs that were reset, their reset infos (``None`` elsewhere).

        :param train_actions: ``(num_envs, n_train, ...)``
        :param npc_actions: each NPC group's ``(num_envs, n_g, ...)``
        :param held: ``(num_envs,)`` bool
        """
        raise NotImplementedError

    def call(self, index: int, name: str, args: tuple, kwargs: dict[str, Any], or_get: bool = False) -> Any:
        """Call method ``name`` of sub-env ``index``'s PettingZoo env (found through its wrappers).

        :param or_get: return ``name`` as it is when it is not callable, as Gymnasium's ``call`` does
        """
        return self._sub_env_op(index, "call_or_get" if or_get else "call", name, args, kwargs)

    def is_wrapped(self, index: int, wrapper_class: type) -> bool:
        """Whether sub-env ``index``'s env, or an env it wraps, is a ``wrapper_class``."""
        return self._sub_env_op(index, "wrapped", "", (wrapper_class,), {})

    def get_attr(self, index: int, name: str) -> Any:
        """Attribute ``name`` of sub-env ``index``'s PettingZoo env, found through its wrappers."""
        return self._sub_env_op(index, "get", name, (), {})

    def set_attr(self, index: int, name: str, value: Any) -> None:
        """Set ``name`` on the wrapper of sub-env ``index``'s PettingZoo env that owns it."""
        self._sub_env_op(index, "set", name, (value,), {})

    def _sub_env_op(self, index: int, op: str, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Run :func:`_env_op` ``op`` on sub-env ``index``'s PettingZoo env, raising what it raises."""
        raise NotImplementedError

    def _index(self, index: int) -> int:
        """Sub-env ``index`` read as a list reads it (negative counts from the end)."""
        if not -self.num_envs <= index < self.num_envs:
            raise IndexError(
                f"sub-env index {index} is out of range: there are {self.num_envs} sub-envs, "
                f"so use {-self.num_envs} <= index < {self.num_envs}"
            )
        return index % self.num_envs

    def close(self) -> None:
        raise NotImplementedError


_MISSING = object()


def _env_chain(env: Any) -> list[Any]:
    """``env`` and the envs it wraps, outermost first, down to ``env.unwrapped``.

    PettingZoo wrappers keep the env they wrap in ``.env``; ``aec_to_parallel`` (what most
    ``parallel_env()`` constructors return) keeps it in ``.aec_env``.
    """
    chain, bottom = [env], getattr(env, "unwrapped", None)
    while chain[-1] is not bottom:
        inner = getattr(chain[-1], "env", None)
        if inner is None:
            inner = getattr(chain[-1], "aec_env", None)
        if inner is None or any(inner is e for e in chain):
            break
        chain.append(inner)
    return chain


def _env_op(env: Any, op: str, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
    """Run ``op`` on a PettingZoo env, resolving ``name`` through its wrappers as Gymnasium's
    ``get_wrapper_attr`` / ``set_wrapper_attr`` do.

    ``get``, ``call`` and ``call_or_get`` take ``name`` from the outermost env of the chain that has
    it; ``call_or_get`` (Gymnasium's ``call``) returns it as it is when it is not callable. ``set``
    sets it on the outermost env that owns it (defines it itself, not through a ``__getattr__``
    forwarding to the env it wraps, which would leave the wrapped env unchanged), or on ``env`` if
    none does. ``wrapped``: is any env of the chain an instance of ``args[0]``?
    """
    chain = _env_chain(env)
    if op == "wrapped":
        return any(isinstance(e, args[0]) for e in chain)
    if op == "set":
        owner = next((e for e in chain if inspect.getattr_static(e, name, _MISSING) is not _MISSING), env)
        setattr(owner, name, args[0])
        return None
    for e in chain:
        value = getattr(e, name, _MISSING)
        if value is not _MISSING:
            break
    else:
        wrapped = ", ".join(type(e).__name__ for e in chain[1:]) or "none"
        raise AttributeError(
            f"{type(env).__name__} has no attribute {name!r}, nor has any env it wraps ({wrapped})"
        )
    if op == "get" or (op == "call_or_get" and not callable(value)):
        return value
    return value(*args, **kwargs)


def _joint_envs(
    envs: list[Any], layout: AgentLayout, reset_when_training_agents_dead: bool
) -> tuple[JointBuffers, list[JointEnv]]:
    """One :class:`JointEnv` per env of ``envs``, writing into one new batch of buffers."""
    buffers = JointBuffers.allocate(layout, (len(envs),))
    try:
        joints = [
            JointEnv(env, layout, buffers.at(i), reset_when_training_agents_dead) for i, env in enumerate(envs)
        ]
    except BaseException:  # an env that does not fit the layout: close them all, not just that one
        for env in envs:
            env.close()
        raise
    return buffers, joints


def _step_all(
    joints: list[JointEnv], train_actions: np.ndarray, npc_actions: list[np.ndarray], held: np.ndarray
):
    step_infos, reset_infos = [], []
    per_env = env_actions(joints[0].layout, train_actions, npc_actions)
    for joint, actions, deliver_reset in zip(joints, per_env, held.tolist()):
        if deliver_reset:
            joint.deliver_reset()
        else:
            joint.step(actions)
        step_infos.append(joint.train_infos)
        reset_infos.append(joint.reset_infos if joint.buf.env_done[0] else None)
    return step_infos, reset_infos


def _reset_all(
    joints: list[JointEnv], seeds: Sequence[int | None], options: Sequence[dict[str, Any] | None],
    mask: Sequence[bool] | None,
) -> None:
    for i, joint in enumerate(joints):
        if mask is None or mask[i]:
            joint.reset(seed=seeds[i], options=options[i])


class InProcessBackend(Backend):
    """All sub-envs in the main process, writing straight into the wrapper's buffers.

    :param envs: the PettingZoo envs (already built)
    """

    def __init__(self, envs: list[Any], layout: AgentLayout, reset_when_training_agents_dead: bool) -> None:
        self.num_envs = len(envs)
        self.buffers, self.joints = _joint_envs(envs, layout, reset_when_training_agents_dead)

    def reset(
        self,
        seeds: Sequence[int | None],
        options: Sequence[dict[str, Any] | None],
        mask: np.ndarray | None = None,
    ) -> list[list[dict[str, Any]]]:
        _reset_all(self.joints, seeds, options, mask)
        return [joint.train_infos for joint in self.joints]

    def step(self, train_actions: np.ndarray, npc_actions: list[np.ndarray], held: np.ndarray):
        return _step_all(self.joints, train_actions, npc_actions, held)

    def _sub_env_op(self, index: int, op: str, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        return _env_op(self.joints[self._index(index)].env, op, name, args, kwargs)

    def close(self) -> None:
        for joint in self.joints:
            joint.close()


class JointBatchEnv(gym.Env):
    """A worker's share of the sub-envs, as one Gymnasium env whose observation is its buffers.

    The PettingZoo envs are built lazily at the first reset, so the probe instance that
    ``AsyncVectorEnv`` builds in the main process to read the spaces stays cheap.

    :param env_fns: factories of this worker's sub-envs
    :param first: index of this worker's first sub-env in the whole vector (picks its seeds)
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self, env_fns: Sequence[EnvFn], first: int, layout: AgentLayout, reset_when_training_agents_dead: bool
    ) -> None:
        self.env_fns = list(env_fns)
        self.first = first
        self.layout = layout
        self.reset_when_training_agents_dead = reset_when_training_agents_dead
        self.observation_space = batch_spaces(buffer_spaces(layout), len(self.env_fns))
        self.action_space = spaces.Dict(action_spaces(layout, len(self.env_fns)))
        self.joints: list[JointEnv] | None = None
        self.buffers: JointBuffers | None = None

    def _build(self) -> list[JointEnv]:
        if self.joints is None:
            envs = [fn() for fn in self.env_fns]
            self.buffers, self.joints = _joint_envs(envs, self.layout, self.reset_when_training_agents_dead)
        return self.joints

    @staticmethod
    def reset_options(
        seeds: Sequence[int | None], options: Sequence[dict[str, Any] | None], mask: np.ndarray | None
    ) -> dict[str, Any]:
        """The ``options`` of :meth:`reset`: the whole vector's seeds, env options and reset mask (each
        worker reads its own envs' part)."""
        mask_list = None if mask is None else mask.tolist()
        return {"seeds": list(seeds), "env_options": list(options), "mask": mask_list}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        try:
            return self._reset(options or {})
        except Exception as e:  # noqa: BLE001 - re-raised in the main process (see _EnvOpError)
            return self._obs_now(), {"error": _EnvOpError(e)}

    def _obs_now(self) -> dict[str, np.ndarray]:
        """The buffers, or zeros where the envs could not even be built: AsyncVectorEnv's worker
        writes an observation to shared memory whatever happened."""
        if self.buffers is not None:
            return self.buffers.as_arrays()
        return {k: np.zeros(s.shape, s.dtype) for k, s in self.observation_space.spaces.items()}

    def _reset(self, options: dict[str, Any]):
        joints = self._build()
        _reset_all(joints, *self._reset_args(options))
        return self.buffers.as_arrays(), {"infos": [j.train_infos for j in joints]}

    def _reset_args(self, options: dict[str, Any]) -> tuple[list[Any], list[Any], list[Any] | None]:
        """This worker's part of a reset request: its envs' seeds, options and mask (or ``None``)."""
        mine = slice(self.first, self.first + len(self.env_fns))  # its part of the whole vector's lists
        seeds = options.get("seeds") or [None] * mine.stop
        env_options = options.get("env_options") or [None] * mine.stop
        mask = options.get("mask")
        return seeds[mine], env_options[mine], None if mask is None else mask[mine]

    def step(self, action: dict[str, np.ndarray]):
        try:
            return self._step(action)
        except Exception as e:  # noqa: BLE001 - as a value, the worker loop (and its process) lives on
            return self._obs_now(), 0.0, False, False, {"error": _EnvOpError(e)}

    def _step(self, action: dict[str, np.ndarray]):
        npc = [action[f"npc_{g}"] for g in range(len(self.layout.groups))]
        step_infos, reset_infos = _step_all(self._build(), action["train"], npc, action["held"])
        return self.buffers.as_arrays(), 0.0, False, False, {"infos": step_infos, "reset_infos": reset_infos}

    def npc_env_call(self, index: int, op: str, name: str, args: tuple = (), kwargs: dict | None = None) -> Any:
        """Run :func:`_env_op` ``op`` on sub-env ``index`` if this worker holds it (``_NOT_HERE``
        otherwise). What it raises comes back as an :class:`_EnvOpError`: raised here, it would end
        ``AsyncVectorEnv``'s worker loop, and every later call would fail."""
        local = index - self.first
        if not 0 <= local < len(self.env_fns):
            return _NOT_HERE
        try:
            return _env_op(self._build()[local].env, op, name, args, kwargs or {})
        except Exception as e:  # noqa: BLE001 - re-raised in the main process
            return _EnvOpError(e)

    def close(self) -> None:
        for joint in self.joints or []:
            joint.close()


_NOT_HERE = "__npc_wrapper_not_here__"

#: Linux's prctl option that has the kernel signal a process when its parent dies.
_PR_SET_PDEATHSIG = 1
#: How often a worker's watchdog checks that its parent still lives, in seconds.
_WATCHDOG_INTERVAL = 0.25


def _die_with_parent(kernel_signal: bool) -> None:
    """End this worker process when its parent dies, even while an env hangs in it.

    An idle worker notices on its own (its pipe closes), but one stuck in an env's ``step`` would
    outlive the parent. On Linux, with ``kernel_signal``, the kernel sends SIGKILL when the parent
    thread ends (PR_SET_PDEATHSIG; only asked for when the main thread started the workers, since it is
    tied to the starting thread); everywhere, a daemon thread polls the parent pid and exits the process
    once it changes (the worker was re-parented: its parent died).
    """
    parent = os.getppid()
    if kernel_signal and sys.platform == "linux":
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no libc prctl (an unusual libc): the watchdog still runs
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCHDOG_INTERVAL)
        os._exit(1)  # the parent is gone: nothing is left to report to or clean up for

    threading.Thread(target=watch, name="npc_wrapper-parent-watchdog", daemon=True).start()


def _worker_batch(
    parent: int, kernel_signal: bool, batch: Callable[..., gym.Env], env_fns: Sequence[EnvFn], first: int,
    layout: Any,
) -> gym.Env:
    """A worker's batch env (``batch(env_fns, first, layout)``: a :class:`JointBatchEnv`, or its
    turn-based counterpart), built in the worker (where it also arranges to die with its parent) and
    once in ``parent``, the main process, where ``AsyncVectorEnv`` reads the spaces."""
    if os.getpid() != parent:
        _die_with_parent(kernel_signal)
    return batch(env_fns, first, layout)


class _WorkerTraceback(Exception):
    """Shown as the cause of an exception re-raised from a worker: the traceback it had there."""

    def __str__(self) -> str:
        return f"\n{self.args[0]}"


class _EnvOpError:
    """An exception a sub-env raised in a worker, as a value the pipe can carry.

    The exception travels pickled inside, so one that does not pickle, or does not unpickle in the
    main process, still arrives: as a ``RuntimeError`` naming it.
    """

    def __init__(self, error: Exception) -> None:
        self.summary = f"{type(error).__name__}: {error}"
        self.traceback = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        try:
            self.pickled: bytes | None = pickle.dumps(error)
        except Exception:  # noqa: BLE001 - e.g. it holds a lock, or its class is local to a function
            self.pickled = None

    def reraise(self) -> NoReturn:
        """Raise the original exception (its type kept where it unpickles), caused by its traceback."""
        try:
            error = pickle.loads(self.pickled) if self.pickled is not None else None
        except Exception:  # noqa: BLE001 - e.g. its __init__ takes other arguments than its args
            error = None
        if not isinstance(error, BaseException):
            error = RuntimeError(
                f"a sub-env raised {self.summary} in a worker process, and that exception cannot be sent "
                "to this process (num_workers=0 runs the envs in-process)"
            )
        raise error from _WorkerTraceback(self.traceback)


def batch_spaces(per_env: dict[str, spaces.Box], n: int) -> spaces.Dict:
    """A batch of ``n`` envs' buffers (leading axis = env) as a Dict of Boxes, a worker's "observation"
    (a zero-width buffer, such as the masks of Box actions, has no bounds to take)."""
    def bound(values: np.ndarray, default: int, pick: Any) -> Any:
        return pick(values) if values.size else default

    return spaces.Dict({
        k: spaces.Box(bound(s.low, 0, np.min), bound(s.high, 1, np.max), (n, *s.shape), s.dtype)
        for k, s in per_env.items()
    })


def action_box(shape: tuple[int, ...], space: spaces.Space) -> spaces.Box:
    """A Box of ``shape`` arrays of ``space``'s actions (``shape + space.shape``), int64 for integer
    spaces and float64 otherwise, as a worker's action arrays travel."""
    shape = (*shape, *space.shape)
    if space.dtype is not None and space.dtype.kind in "iub":
        info = np.iinfo(np.int64)
        return spaces.Box(info.min, info.max, shape, np.int64)
    return spaces.Box(-np.inf, np.inf, shape, np.float64)


def action_spaces(layout: AgentLayout, n: int) -> dict[str, spaces.Box]:
    """The action arrays a batch of ``n`` sub-envs takes: training agents', then each NPC group's, and
    which envs only deliver their reset (see :meth:`Backend.step`)."""
    out = {"train": action_box((n, layout.n_train), layout.action_space)}
    for g, group in enumerate(layout.groups):
        out[f"npc_{g}"] = action_box((n, len(group.agents)), group.action_space)
    out["held"] = spaces.MultiBinary(n)
    return out


def check_worker_split(num_envs: int, num_workers: int, prefix: str = "") -> None:
    """Raise ``ValueError`` unless the envs split evenly over the workers; ``prefix`` qualifies the
    names in the message (``"trainer."`` for the CLI's keys)."""
    if num_workers and num_envs % num_workers:
        raise ValueError(
            f"{prefix}num_envs={num_envs} must be a multiple of {prefix}num_workers={num_workers} "
            "(each worker steps the same number of envs); use "
            f"{prefix}num_envs={num_envs - num_envs % num_workers or num_workers} "
            f"or a {prefix}num_workers that divides {num_envs}"
        )


def env_only_layout(layout: AgentLayout) -> AgentLayout:
    """``layout`` without its NPC specs: workers step envs only, so the NPC models and callables stay in
    this process, unpickled and unsent."""
    return dataclasses.replace(layout, groups=tuple(dataclasses.replace(g, spec=None) for g in layout.groups))


class WorkerBackend(Backend):
    """Sub-envs split evenly over ``num_workers`` processes.

    :param env_fns: one factory per sub-env
    :param num_workers: processes; must divide ``len(env_fns)``
    :param start_method: multiprocessing start method (``None``: the platform default)
    :param step_timeout: seconds the workers may take to answer a step (``None``: no limit); a worker
        that takes longer is reported by index, and the backend is then broken, as after a dead worker
    """

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        num_workers: int,
        layout: AgentLayout,
        reset_when_training_agents_dead: bool,
        start_method: str | None = None,
        step_timeout: float | None = None,
    ) -> None:
        n = len(env_fns)
        check_worker_split(n, num_workers)
        self.num_envs, self.num_workers, self.layout = n, num_workers, layout
        per = n // num_workers
        env_layout = env_only_layout(layout)
        kernel_signal = threading.current_thread() is threading.main_thread()
        batch = self._batch_class(reset_when_training_agents_dead)
        batch_fns = [
            functools.partial(
                _worker_batch, os.getpid(), kernel_signal, batch, env_fns[w * per:(w + 1) * per], w * per,
                env_layout,
            )
            for w in range(num_workers)
        ]
        try:
            self.vec = AsyncVectorEnv(
                batch_fns, shared_memory=True, copy=False, context=start_method,
                autoreset_mode=AutoresetMode.DISABLED,
            )
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            if "pickle" not in str(e).lower():
                raise
            raise ValueError(
                f"the env factory cannot be sent to the worker processes ({type(e).__name__}: {e}): with "
                f"start_method={start_method or multiprocessing.get_start_method()!r} it must pickle, with "
                "all it captures; use a module-level function (or functools.partial of one), or "
                "start_method='fork'"
            ) from e
        self.step_timeout = step_timeout
        self.buffers: JointBuffers | None = None  # views into shared memory, set at the first reset
        self._broken: str | None = None  # why the workers cannot go on, once they cannot

    @staticmethod
    def _batch_class(reset_when_training_agents_dead: bool) -> Callable[..., gym.Env]:
        """What a worker builds its batch env with, from ``(env_fns, first, layout)`` (picklable: it goes
        to the worker): this backend's kind of batch env."""
        reset_dead = reset_when_training_agents_dead
        return functools.partial(JointBatchEnv, reset_when_training_agents_dead=reset_dead)

    def _views(self, obs: dict[str, np.ndarray]) -> JointBuffers:
        flat = {k: v.reshape(self.num_envs, *v.shape[2:]) for k, v in obs.items()}
        return JointBuffers.from_arrays(flat, len(self.layout.groups))

    def _guard(self, fn: Callable[[], Any]) -> Any:
        """Run a call to the workers; re-raise a sub-env's error as itself. Any other failure (a worker
        died, an interrupt mid-call) leaves the workers unusable, which later calls then say."""
        if self._broken is not None:
            raise RuntimeError(
                f"the worker processes cannot go on after an earlier failure ({self._broken}); close() this "
                "vector env and make a new one"
            )
        try:
            result = fn()
        except (EOFError, BrokenPipeError, ConnectionError) as e:
            # A pipe's end closes a moment before its process can be reaped: give it that moment.
            deadline = time.monotonic() + 2.0
            while all(p.is_alive() for p in self.vec.processes) and time.monotonic() < deadline:
                time.sleep(0.01)
            codes = [None if p.is_alive() else p.exitcode for p in self.vec.processes]  # is_alive() reaps
            self._broken = f"a worker process died, exit codes {codes}"
            raise RuntimeError(
                f"a worker process stepping the sub-envs died (exit codes {codes}); the env or its factory "
                "crashed the process: run with num_workers=0 to see the error in-process"
            ) from e
        except BaseException as e:
            self._broken = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise
        info = result[-1] if isinstance(result, tuple) else None
        errors = info.get("error") if isinstance(info, dict) else None
        if errors is not None:  # a sub-env raised in a worker: the same exception as in-process
            next(err for err, raised in zip(errors, info["_error"]) if raised).reraise()
        return result

    def reset(
        self,
        seeds: Sequence[int | None],
        options: Sequence[dict[str, Any] | None],
        mask: np.ndarray | None = None,
    ) -> list[list[dict[str, Any]]]:
        infos = self._reset_workers(seeds, options, mask)
        return [i for worker in infos["infos"] for i in worker]

    def _reset_workers(
        self, seeds: Sequence[int | None], options: Sequence[dict[str, Any] | None], mask: np.ndarray | None
    ) -> dict[str, Any]:
        """Reset the workers' envs (see :meth:`reset`); their infos, as ``AsyncVectorEnv`` merges them."""
        request = JointBatchEnv.reset_options(seeds, options, mask)
        obs, infos = self._guard(lambda: self.vec.reset(options=request))
        if self.buffers is None:
            self.buffers = self._views(obs)
        return infos

    def step(self, train_actions: np.ndarray, npc_actions: list[np.ndarray], held: np.ndarray):
        k = self.num_workers
        actions = {"train": train_actions.reshape(k, -1, *train_actions.shape[1:])}
        actions.update({f"npc_{g}": a.reshape(k, -1, *a.shape[1:]) for g, a in enumerate(npc_actions)})
        actions["held"] = held.reshape(k, -1)
        _, _, _, _, infos = self._guard(lambda: self._step_within_timeout(actions))
        step_infos = [i for worker in infos["infos"] for i in worker]
        reset_infos = [i for worker in infos["reset_infos"] for i in worker]
        return step_infos, reset_infos

    def _step_within_timeout(self, actions: dict[str, np.ndarray]) -> tuple:
        """``AsyncVectorEnv.step``, or a ``TimeoutError`` naming the workers that did not answer within
        ``step_timeout`` (their step goes on, so the workers cannot be used again: ``_guard`` marks them)."""
        self.vec.step_async(actions)
        try:
            return self.vec.step_wait(timeout=self.step_timeout)
        except multiprocessing.TimeoutError:
            late = [w for w, pipe in enumerate(self.vec.parent_pipes) if not pipe.poll(0)]
            which = ", ".join(f"worker {w} ({self._sub_envs_of(w)})" for w in late) or "the workers"
            raise TimeoutError(
                f"{which} timed out: no answer to step() within step_timeout={self.step_timeout} s (an env "
                "hangs, or steps slower than that); close() this vector env, and raise step_timeout if "
                "the env is only slow"
            ) from None

    def _sub_envs_of(self, worker: int) -> str:
        """The sub-envs worker ``worker`` steps, for messages."""
        per = self.num_envs // self.num_workers
        return f"sub-env {worker * per}" if per == 1 else f"sub-envs {worker * per}-{(worker + 1) * per - 1}"

    def _sub_env_op(self, index: int, op: str, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        index = self._index(index)
        results = self._guard(lambda: self.vec.call("npc_env_call", index, op, name, args, kwargs))
        (result,) = [r for r in results if not (isinstance(r, str) and r == _NOT_HERE)]  # its one worker's
        if isinstance(result, _EnvOpError):
            result.reraise()
        return result

    def close(self) -> None:
        self.buffers = None
        vec = self.vec
        if vec.closed:
            return
        healthy = (
            self._broken is None
            and vec._state == AsyncState.DEFAULT
            and all(p.is_alive() for p in vec.processes)
        )
        if not healthy:
            # Gymnasium's close would first wait for the call left pending (forever, if its worker is gone,
            # or re-raising that worker's error): there is nothing to wait for, so terminate instead.
            vec._state = AsyncState.DEFAULT
        try:
            vec.close(terminate=not healthy)
        except Exception:  # noqa: BLE001 - a pipe that broke while closing: still end every worker
            for process in vec.processes:
                if process.is_alive():
                    process.terminate()
                process.join(5)
            vec.closed = True

