"""Which agents train and which are NPCs, and the array layout that follows from it.

The split is the original dual-policy feature's rule made exact: the first
``floor(pct * n_agents + 0.5)`` agents of ``possible_agents`` train, the rest are NPCs, the same in
every sub-env for the whole run.
``training_agents=[...]`` (names or glob patterns) overrides the percentage. A vector env has one
slot per training agent per sub-env; :class:`SlotMap` says which slot is which.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from npc_wrapper.masks import masked_observation_space, served_observation_space

__all__ = [
    "AgentLayout",
    "NPCGroup",
    "SlotMap",
    "split_agents",
    "agent_ranges",
    "build_layout",
    "same_value",
]

AgentID = Hashable


def _matches(agent: AgentID, pattern: Any) -> bool:
    if isinstance(pattern, str):
        return fnmatch.fnmatchcase(str(agent), pattern)
    return agent == pattern


def split_agents(
    possible_agents: Sequence[AgentID],
    training_agents_pct: float | None = 0.5,
    training_agents: Sequence[Any] | None = None,
) -> tuple[list[AgentID], list[AgentID]]:
    """Return ``(training, npc)`` agents, each in ``possible_agents`` order.

    :param possible_agents: the env's ``possible_agents``
    :param training_agents_pct: fraction of agents that train, in ``[0, 1]``
    :param training_agents: names or glob patterns (``"red_*"``) of the training agents;
        overrides ``training_agents_pct``

    Example::

        >>> from npc_wrapper import split_agents
        >>> split_agents(["red_0", "red_1", "blue_0", "blue_1"], training_agents_pct=0.75)
        (['red_0', 'red_1', 'blue_0'], ['blue_1'])
        >>> split_agents(["red_0", "red_1", "blue_0", "blue_1"], training_agents=["blue_*"])
        (['blue_0', 'blue_1'], ['red_0', 'red_1'])
    """
    agents = list(possible_agents)
    pct = training_agents_pct
    if pct is not None and (isinstance(pct, (bool, np.bool_)) or not isinstance(pct, numbers.Real)):
        raise TypeError(
            f"training_agents_pct must be a fraction in [0, 1] as a number (0.75 means 75% of agents train), "
            f"got {pct!r} ({type(pct).__name__})"
        )
    if training_agents is not None:
        if isinstance(training_agents, (str, bytes)):
            training_agents = [training_agents]
        if len(training_agents) == 0:
            raise ValueError(
                f"training_agents is empty: name at least one of the env's possible_agents {agents} "
                "(names or glob patterns such as 'red_*'), or pass training_agents=None to use "
                "training_agents_pct"
            )
        unmatched = [p for p in training_agents if not any(_matches(a, p) for a in agents)]
        if unmatched:
            raise ValueError(
                f"training_agents patterns {unmatched} match none of the env's possible_agents {agents}"
            )
        train = [a for a in agents if any(_matches(a, p) for p in training_agents)]
    else:
        if training_agents_pct is None or not 0.0 <= float(training_agents_pct) <= 1.0:
            raise ValueError(
                f"training_agents_pct must be a fraction in [0, 1] (0.75 means 75% of agents train), "
                f"got {training_agents_pct!r}"
            )
        # Rounded to 9 digits first so exact halves (0.29 * 50 = 14.5) are not a float hair below .5.
        n_train = math.floor(round(float(training_agents_pct) * len(agents), 9) + 0.5)
        if n_train == 0:
            # Rounded up: 0.5 / 24 shown as 0.0208 would round to 0 agents again.
            least = math.ceil(0.5 / len(agents) * 1e4) / 1e4
            raise ValueError(
                f"training_agents_pct={training_agents_pct} of {len(agents)} agents rounds to 0 training agents; "
                f"use at least {least:g} or name them with training_agents=[...]"
            )
        train = agents[:n_train]
    return train, [a for a in agents if a not in train]


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def agent_ranges(agents: Sequence[AgentID], most: int = 3) -> str:
    """``agents`` in short: runs of consecutively numbered names as ``red_0..80``, runs joined by ``+``,
    and beyond ``most`` runs the rest counted (``+5 more``). Log lines and run names use it.

    :param agents: agent names, in their env's order
    :param most: runs shown before the rest are only counted

    Example::

        >>> from npc_wrapper.agents import agent_ranges
        >>> agent_ranges(["adversary_0", "adversary_1", "adversary_2"]), agent_ranges(["agent_0"])
        ('adversary_0..2', 'agent_0')
        >>> agent_ranges(["red_0", "red_1", "red_5", "blue_0", "prey", "a", "b"])
        'red_0..1+red_5+blue_0+3 more'
    """
    runs: list[list[Any]] = []  # [prefix, first number, last number, names in the run], numbers as written
    for agent in agents:
        m = _NUMBERED.match(str(agent))
        prefix, number = (m.group(1), m.group(2)) if m else (str(agent), "")
        last = runs[-1] if runs else None
        if last is not None and number and last[2] and last[0] == prefix and int(last[2]) + 1 == int(number):
            last[2], last[3] = number, last[3] + 1
        else:
            runs.append([prefix, number, number, 1])
    shown = [f"{p}{a}..{b}" if n > 1 else f"{p}{a}" for p, a, b, n in runs[:most]]
    rest = sum(r[3] for r in runs[most:])
    return "+".join(shown + ([f"{rest} more"] if rest else []))


@dataclass(frozen=True)
class NPCGroup:
    """NPC agents driven by one policy spec and sharing one observation and action space.

    :param agents: the group's agents, in ``possible_agents`` order
    :param spec: what the user passed for them (``"random"``, a model, a URI...)
    :param observation_space: their shared observation space
    :param action_space: their shared action space
    :param masked: whether the env gives these agents action masks in their observations (a classic
        ``Dict``; their NPCs must take masks), the ``observation`` entry being ``observation_space``
    """

    agents: tuple[AgentID, ...]
    spec: Any
    observation_space: spaces.Space
    action_space: spaces.Space
    masked: bool = False


@dataclass(frozen=True)
class AgentLayout:
    """Where every agent of one sub-env lives in the wrapper's arrays.

    Training agents occupy slots ``0..n_train-1`` of their env; NPC group ``g`` occupies rows
    ``0..len(group)-1`` of that group's buffers. ``agent_index`` is the position in
    ``possible_agents``, used for the per-agent reward and done arrays.
    """

    possible_agents: tuple[AgentID, ...]
    training: tuple[AgentID, ...]
    groups: tuple[NPCGroup, ...]
    observation_space: spaces.Space
    action_space: spaces.Space
    #: Whether the training agents' observations are classic ``Dict(observation, action_mask)``s: they
    #: observe the ``observation`` entry and their masks are served (see :mod:`npc_wrapper.masks`).
    masked: bool = False

    @property
    def n_agents(self) -> int:
        return len(self.possible_agents)

    @property
    def n_train(self) -> int:
        return len(self.training)

    @property
    def train_index(self) -> np.ndarray:
        """Positions of the training agents in ``possible_agents``."""
        return np.array([self.possible_agents.index(a) for a in self.training], dtype=np.intp)

    @property
    def npc_index(self) -> np.ndarray:
        """Positions of all NPC agents in ``possible_agents``."""
        return np.array([i for i, a in enumerate(self.possible_agents) if a not in self.training], dtype=np.intp)

    def group_index(self, g: int) -> np.ndarray:
        """Positions of NPC group ``g``'s agents in ``possible_agents``."""
        return np.array([self.possible_agents.index(a) for a in self.groups[g].agents], dtype=np.intp)


class SlotMap:
    """The vector envs' slots: slot ``k`` is training agent ``k % n_train`` of sub-env ``k // n_train``
    (env-major), ``num_envs * n_train`` slots in all. Every slot <-> sub-env conversion goes through it.

    :param num_envs: PettingZoo envs (sub-envs)
    :param n_train: training agents per sub-env

    Example::

        >>> import numpy as np
        >>> slots = SlotMap(num_envs=3, n_train=2)
        >>> slots.num_slots, slots.env(5), slots.agent(5), slots.of_env(1)
        (6, 2, 1, range(2, 4))
        >>> slots.env_of
        (0, 0, 1, 1, 2, 2)
        >>> slots.per_slot(np.array([True, False, True])).tolist()
        [True, True, False, False, True, True]
        >>> slots.by_env(np.arange(6)).sum(axis=1).tolist()  # one row per sub-env
        [1, 5, 9]
        >>> slots.one_per_env([7, 7, 3, 3, 5, 5], "seed")
        [7, 3, 5]
    """

    def __init__(self, num_envs: int, n_train: int) -> None:
        self.num_envs = num_envs
        self.n_train = n_train
        self.num_slots = num_envs * n_train
        #: The sub-env of each slot.
        self.env_of: tuple[int, ...] = tuple(k // n_train for k in range(self.num_slots))

    def env(self, slot: int) -> int:
        """The sub-env of ``slot``."""
        return slot // self.n_train

    def agent(self, slot: int) -> int:
        """The training agent (its index in ``AgentLayout.training``) of ``slot``."""
        return slot % self.n_train

    def of_env(self, env: int) -> range:
        """The slots of sub-env ``env``."""
        return range(env * self.n_train, (env + 1) * self.n_train)

    def per_slot(self, per_env: np.ndarray) -> np.ndarray:
        """A per-sub-env array (leading axis ``num_envs``) repeated for each of a sub-env's slots."""
        return np.repeat(per_env, self.n_train, axis=0)

    def by_env(self, per_slot: np.ndarray) -> np.ndarray:
        """A per-slot array (leading axis ``num_slots``) as ``(num_envs, n_train, ...)``: a view where
        numpy can make one."""
        return per_slot.reshape(self.num_envs, self.n_train, *per_slot.shape[1:])

    def first_of_env(self, per_slot: Sequence[Any]) -> list[Any]:
        """Each sub-env's first slot's entry of ``per_slot``."""
        return list(per_slot[::self.n_train])

    def one_per_env(self, values: Sequence[Any], what: str, per_env_ok: bool = False) -> list[Any]:
        """One value per sub-env from one per slot, which must agree within each sub-env's slots (a
        PettingZoo env takes one seed, options dict or attribute value), or, with ``per_env_ok``, from
        one per sub-env.

        :param what: names the argument in errors
        """
        if per_env_ok and len(values) == self.num_envs:
            return list(values)
        if len(values) != self.num_slots:
            per_env = f"one value per PettingZoo env ({self.num_envs}) or " if per_env_ok else "one value "
            raise ValueError(f"{what} needs {per_env}per slot ({self.num_slots}), got {len(values)}")
        for e in range(self.num_envs):
            mine = self.of_env(e)
            values_e = list(values[mine.start:mine.stop])
            if not all(same_value(values_e[0], v) for v in values_e[1:]):
                raise ValueError(
                    f"{what} gives slots {mine.start}-{mine.stop - 1} different values {values_e}; they are "
                    f"the training agents of one PettingZoo env (env {e}), which takes one: give them equal "
                    "values"
                )
        return self.first_of_env(values)


def same_value(a: Any, b: Any) -> bool:
    """Whether two values are equal, arrays compared by value, through dicts, lists and tuples."""
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # an == that is not one bool
        return False


def _describe(agents: Sequence[AgentID], space_of: Any) -> str:
    return ", ".join(f"{a!r}: {space_of(a)}" for a in agents)


def build_layout(
    env: Any,
    npc: Any,
    training_agents_pct: float | None = 0.5,
    training_agents: Sequence[Any] | None = None,
) -> AgentLayout:
    """Split ``env``'s agents, check the training agents share spaces, and group the NPCs.

    :param env: a PettingZoo ``ParallelEnv`` (only ``possible_agents`` and the space getters are used)
    :param npc: one NPC spec for every NPC agent, or a mapping from agent name or glob pattern to
        spec (the first matching pattern wins; every NPC agent must match one)
    """
    possible = tuple(env.possible_agents)
    if len(set(possible)) != len(possible):
        raise ValueError(f"the env's possible_agents has duplicates: {list(possible)}")
    # A classic Dict(observation, action_mask) is served as its observation entry, its mask apart.
    try:
        served = {a: served_observation_space(env.observation_space(a)) for a in possible}
    except ValueError as e:
        raise ValueError(f"{e} (the env's agents {list(possible)})") from None
    # Agents are batched as fixed-shape arrays; Dict/Tuple spaces have no shape to batch.
    nested = [a for a in possible if served[a].shape is None or env.action_space(a).shape is None]
    if nested:
        raise ValueError(
            f"agents {nested} have spaces without a fixed array shape (observation spaces: "
            f"{_describe(nested, env.observation_space)}; action spaces: {_describe(nested, env.action_space)}); "
            "npc_wrapper batches agents as arrays: wrap the env so they use Box spaces "
            "(e.g. gymnasium.spaces.flatten_space and gymnasium.spaces.flatten for Dict/Tuple observations)"
        )
    train, npcs = split_agents(possible, training_agents_pct, training_agents)
    obs_space, act_space = served[train[0]], env.action_space(train[0])
    raw_obs = env.observation_space(train[0])
    odd = [a for a in train if env.observation_space(a) != raw_obs or env.action_space(a) != act_space]
    if odd:
        raise ValueError(
            "all training agents must share one observation space and one action space, but they differ:\n"
            f"  observation spaces: {_describe(train, env.observation_space)}\n"
            f"  action spaces: {_describe(train, env.action_space)}\n"
            "Pad them to a common space with SuperSuit (pad_observations_v0, pad_action_space_v0) "
            "or choose agents that share spaces with training_agents=[...]"
        )

    if isinstance(npc, Mapping):
        unmatched = [a for a in npcs if not any(_matches(a, p) for p in npc)]
        if unmatched:
            raise ValueError(
                f"NPC agents {unmatched} match no key of the npc mapping {list(npc)}; add a pattern such as '*'"
            )
        spec_key = {a: next(p for p in npc if _matches(a, p)) for a in npcs}
        # A key that drives no NPC is a mistake (a typo, or agents that train), unless it is a final
        # catch-all such as "*" (it matches every agent), which may find no NPC left to drive.
        keys = list(npc)
        unused = [
            p for p in keys
            if p not in spec_key.values() and (p != keys[-1] or not all(_matches(a, p) for a in possible))
        ]
        if unused:
            on_train = [p for p in unused if any(_matches(a, p) for a in train)]
            raise ValueError(
                f"npc mapping keys {unused} drive no NPC agent"
                + (
                    f" ({on_train} match training agents {train}, which the trainer drives)"
                    if on_train
                    else ""
                )
                + f"; the NPC agents are {npcs}: remove those keys or fix the patterns"
            )
    else:
        spec_key = {a: None for a in npcs}

    grouped: dict[tuple[Any, int], list[AgentID]] = {}
    space_ids: list[tuple[spaces.Space, spaces.Space]] = []
    for a in npcs:
        pair = (env.observation_space(a), env.action_space(a))
        sid = next((i for i, s in enumerate(space_ids) if s == pair), None)
        if sid is None:
            space_ids.append(pair)
            sid = len(space_ids) - 1
        grouped.setdefault((spec_key[a], sid), []).append(a)
    groups = tuple(
        NPCGroup(
            agents=tuple(members),
            spec=npc[key] if isinstance(npc, Mapping) else npc,
            observation_space=served_observation_space(space_ids[sid][0]),
            action_space=space_ids[sid][1],
            masked=masked_observation_space(space_ids[sid][0]) is not None,
        )
        for (key, sid), members in grouped.items()
    )
    masked = masked_observation_space(env.observation_space(train[0])) is not None
    return AgentLayout(possible, tuple(train), groups, obs_space, act_space, masked)
