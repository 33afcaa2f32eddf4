"""``make_vec_env`` and ``make_vector_env``: the two ways in."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, overload

import torch
from gymnasium.vector import AutoresetMode
from pettingzoo import AECEnv

from npc_wrapper.arguments import check_count, check_seed
from npc_wrapper.engine import NPCEngine
from npc_wrapper.frontends import GymnasiumVectorEnv, SB3VecEnv
from npc_wrapper.turn_engine import TurnEngine
from npc_wrapper.turn_env import SEATS

__all__ = ["make_vec_env", "make_vector_env"]

EnvFn = Callable[[], Any]
FrontEndT = TypeVar("FrontEndT", SB3VecEnv, GymnasiumVectorEnv)


class _Repeated(Sequence):
    """``n`` references to one env factory, without a list of ``n`` entries: ``num_envs`` is checked
    against memory by the engine, which a list of ``10**9`` references (8 GB) would already exhaust."""

    def __init__(self, fn: EnvFn, n: int) -> None:
        self.fn, self.n = fn, n

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: int) -> EnvFn: ...

    @overload
    def __getitem__(self, index: slice) -> _Repeated: ...

    def __getitem__(self, index: int | slice) -> EnvFn | _Repeated:
        if isinstance(index, slice):
            return _Repeated(self.fn, len(range(*index.indices(self.n))))
        if not -self.n <= index < self.n:
            raise IndexError(f"env factory index {index} out of range for {self.n} envs")
        return self.fn


def _engine(
    env_fn: EnvFn | Sequence[EnvFn], num_envs: int, seed: int | None, seat: str, dict_observations: bool,
    **engine_kwargs: Any,
) -> NPCEngine:
    """The engine over ``num_envs`` sub-envs of ``env_fn``, after checking the arguments the engine does
    not take (``engine_kwargs`` are :class:`~npc_wrapper.engine.NPCEngine`'s): a
    :class:`~npc_wrapper.turn_engine.TurnEngine` where the first env is a PettingZoo ``AECEnv``."""
    if seat not in SEATS:
        raise ValueError(f"seat must be one of {list(SEATS)}, got {seat!r}")
    if not isinstance(dict_observations, bool):
        raise TypeError(f"dict_observations must be True or False, got {dict_observations!r}")
    check_seed(seed)
    num_envs = check_count(num_envs, "num_envs", 1, "PettingZoo env copies")
    if _is_env(env_fn):
        raise TypeError(
            "env_fn must be a function that builds a PettingZoo ParallelEnv, not an env "
            f"({type(env_fn).__name__}): "
            "each sub-env needs its own instance; pass e.g. lambda: simple_tag_v3.parallel_env()"
        )
    if callable(env_fn):
        env_fns: Sequence[EnvFn] = _Repeated(env_fn, num_envs)
    else:
        env_fns = list(env_fn)
        bad = [i for i, fn in enumerate(env_fns) if _is_env(fn) or not callable(fn)]
        if bad:
            raise TypeError(
                f"env_fn[{bad[0]}] is a {type(env_fns[bad[0]]).__name__}, not a function that builds a "
                "PettingZoo "
                "ParallelEnv: pass one factory per sub-env, e.g. [lambda: simple_tag_v3.parallel_env()] * 4"
            )
        if num_envs not in (1, len(env_fns)):
            raise ValueError(
                f"num_envs={num_envs} but env_fn is a list of {len(env_fns)} factories (one sub-env each): "
                "leave num_envs out or make them agree"
            )
    probe = env_fns[0]()
    if isinstance(probe, AECEnv):
        return TurnEngine(
            env_fns, seat=seat, dict_observations=dict_observations, probe=probe, **engine_kwargs
        )
    if seat != "fixed":
        probe.close()
        raise ValueError(
            f"seat={seat!r} draws the learner's seat of a turn-based game, but env_fn builds a "
            f"{type(probe).__name__}, not a PettingZoo AECEnv: leave seat='fixed' (training_agents picks who "
            "trains in a parallel env)"
        )
    if dict_observations:
        probe.close()
        raise ValueError(
            f"dict_observations=True serves a turn-based game's whole classic Dict observations, but env_fn "
            f"builds a {type(probe).__name__}, not a PettingZoo AECEnv: leave dict_observations=False (a "
            "parallel env's slots observe the 'observation' entry)"
        )
    return NPCEngine(env_fns, probe=probe, **engine_kwargs)


def _front_end(cls: type[FrontEndT], engine: NPCEngine, seed: int | None) -> FrontEndT:
    """``cls(engine, seed)``; the engine (its worker processes) is closed at once if that fails, not
    left to the garbage collector."""
    try:
        return cls(engine, seed)
    except BaseException:
        engine.close()
        raise


def _is_env(obj: Any) -> bool:
    """An env instance, where a factory was expected (a ParallelEnv is not callable; look at its API)."""
    return not isinstance(obj, type) and hasattr(obj, "possible_agents") and hasattr(obj, "step")


def make_vec_env(
    env_fn: EnvFn | Sequence[EnvFn],
    num_envs: int = 1,
    npc: Any | Mapping[str, Any] = "random",
    training_agents_pct: float | None = 0.5,
    training_agents: Sequence[Any] | None = None,
    seed: int | None = None,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    reset_when_training_agents_dead: bool = True,
    deterministic_npc: bool = False,
    trusted: bool = False,
    start_method: str | None = None,
    backend: str = "process",
    ray_address: str | None = None,
    worker_resources: Mapping[str, float] | None = None,
    step_timeout: float | None = None,
    seat: str = "fixed",
    dict_observations: bool = False,
) -> SB3VecEnv:
    """PettingZoo envs with NPC agents, as a Stable-Baselines3 ``VecEnv``.

    In each of ``num_envs`` envs the first ``floor(training_agents_pct * n_agents + 0.5)`` agents
    of ``possible_agents`` are driven by the trainer (one ``VecEnv`` slot each, env-major) and the
    rest by ``npc``, run batched over all envs inside ``step()``.

    A turn-based game (a PettingZoo ``AECEnv``, detected) has one slot per env, the learner: each step
    plays its move and then every NPC move up to its next turn, and returns its observation there (see
    the README's "Turn-based games"). Action masks (a classic ``Dict`` observation's ``action_mask``,
    or ``info["action_mask"]``) are served by ``venv.action_masks()``, as sb3-contrib's
    ``MaskablePPO`` reads them.

    :param env_fn: factory of a PettingZoo ``ParallelEnv`` or ``AECEnv`` (or one factory per env)
    :param num_envs: number of env copies
    :param npc: the NPC policy: ``"random"``, ``"noop"``, a checkpoint URI or path, an
        :class:`~npc_wrapper.NPCPolicy`, an :class:`~npc_wrapper.NPCPool`, a ``torch.nn.Module``,
        an SB3 model or a callable ``obs_batch -> actions``; or a mapping from agent name or glob
        pattern to one of those, for NPCs with different spaces or roles
    :param training_agents_pct: fraction of each env's agents that train, in ``[0, 1]``
    :param training_agents: names or glob patterns of the training agents (overrides the fraction)
    :param seed: seed for the first ``reset()`` (sub-env ``i`` gets ``seed + i``)
    :param num_workers: workers stepping the envs, ``num_envs / num_workers`` each (0: in this
        process); NPC inference always runs batched in this process
    :param device: where torch NPCs run; ``"auto"`` is CUDA when available
    :param reset_when_training_agents_dead: reset an env as soon as none of its training agents is alive
    :param deterministic_npc: NPCs take their most likely action instead of sampling
    :param trusted: allow checkpoint formats that run code, pickles and TorchScript (only for checkpoints
        you trust)
    :param start_method: multiprocessing start method for the worker processes (platform default if
        ``None``)
    :param backend: what a worker is: ``"process"``, a process on this machine, or ``"ray"``, a Ray actor
        on a Ray cluster's nodes (``pip install 'npc-wrapper[ray]'``; needs ``num_workers >= 1``); both
        give the same results for the same seeds
    :param ray_address: the Ray cluster to connect to (``backend="ray"``); ``None``: the one this process
        is connected to, else ``RAY_ADDRESS``, else a local Ray started for the env and stopped at
        ``close()``
    :param worker_resources: Ray resources each worker reserves (``backend="ray"``), e.g.
        ``{"CPU": 2}``; ``None``: ``{"CPU": 1}``
    :param step_timeout: seconds the workers may take to answer one ``step()`` (with ``num_workers``
        only): a worker stuck longer is an error naming it, and the vector env must then be closed
        (``None``: wait as long as it takes; Ray workers: 300 s)
    :param seat: turn-based games only: ``"fixed"`` (the learner plays the seat ``training_agents`` /
        ``training_agents_pct`` picks; it must pick one) or ``"random"`` (each env draws the learner's
        seat at every episode start among the seats with that seat's spaces; the seat played is in
        ``info["npc_wrapper/episode"]["seat"]``)
    :param dict_observations: turn-based games whose agents observe a classic ``Dict`` of ``observation``
        and ``action_mask`` only: the slots observe that whole ``Dict`` as the env gives it (for a
        ``MultiInputPolicy``, or your own network that reads the mask) instead of its ``observation``
        entry; the masks are still served (``venv.action_masks()``, ``infos["action_mask"]``)
    :return: the vector env; ``venv.training_agents`` and ``venv.npc_agents`` show the split

    Example::

        >>> import npc_wrapper as nw
        >>> from mpe2 import simple_tag_v3
        >>> venv = nw.make_vec_env(lambda: simple_tag_v3.parallel_env(max_cycles=25), num_envs=2,
        ...                        npc="random", training_agents_pct=0.75, seed=0)
        >>> venv.training_agents, venv.npc_agents
        (['adversary_0', 'adversary_1', 'adversary_2'], ['agent_0'])
        >>> venv.reset().shape
        (6, 16)
        >>> venv.close()
    """
    engine = _engine(
        env_fn, num_envs, seed, seat, dict_observations, npc=npc, training_agents_pct=training_agents_pct,
        training_agents=training_agents,
        num_workers=num_workers, device=device, reset_when_training_agents_dead=reset_when_training_agents_dead,
        deterministic_npc=deterministic_npc, trusted=trusted, start_method=start_method, backend=backend,
        ray_address=ray_address, worker_resources=worker_resources, step_timeout=step_timeout,
    )
    return _front_end(SB3VecEnv, engine, seed)


def make_vector_env(
    env_fn: EnvFn | Sequence[EnvFn],
    num_envs: int = 1,
    npc: Any | Mapping[str, Any] = "random",
    training_agents_pct: float | None = 0.5,
    training_agents: Sequence[Any] | None = None,
    seed: int | None = None,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    reset_when_training_agents_dead: bool = True,
    deterministic_npc: bool = False,
    trusted: bool = False,
    start_method: str | None = None,
    autoreset_mode: str | AutoresetMode = AutoresetMode.SAME_STEP,
    backend: str = "process",
    ray_address: str | None = None,
    worker_resources: Mapping[str, float] | None = None,
    step_timeout: float | None = None,
    seat: str = "fixed",
    dict_observations: bool = False,
) -> GymnasiumVectorEnv:
    """The same as :func:`make_vec_env`, as a Gymnasium ``VectorEnv``.

    :param seed: seed for the first ``reset()`` (sub-env ``i`` gets ``seed + i``), as
        ``reset(seed=seed)`` would; a seed given to that ``reset`` wins
    :param autoreset_mode: ``SAME_STEP`` (``infos["final_obs"]`` on the done step) or ``NEXT_STEP``
        (the step after a done delivers the reset; needed by Gymnasium's observation wrappers such
        as ``NormalizeObservation``); see :class:`~npc_wrapper.GymnasiumVectorEnv`

    Example::

        >>> import npc_wrapper as nw
        >>> from mpe2 import simple_tag_v3
        >>> envs = nw.make_vector_env(lambda: simple_tag_v3.parallel_env(max_cycles=25), num_envs=2,
        ...                           training_agents_pct=0.75, seed=0)
        >>> obs, infos = envs.reset()  # seeded with 0, as reset(seed=0)
        >>> envs.single_observation_space.shape, envs.num_envs
        ((16,), 6)
        >>> envs.close()
    """
    engine = _engine(
        env_fn, num_envs, seed, seat, dict_observations, npc=npc, training_agents_pct=training_agents_pct,
        training_agents=training_agents,
        num_workers=num_workers, device=device, reset_when_training_agents_dead=reset_when_training_agents_dead,
        deterministic_npc=deterministic_npc, trusted=trusted, start_method=start_method,
        autoreset_mode=autoreset_mode, backend=backend, ray_address=ray_address,
        worker_resources=worker_resources, step_timeout=step_timeout,
    )
    return _front_end(GymnasiumVectorEnv, engine, seed)
