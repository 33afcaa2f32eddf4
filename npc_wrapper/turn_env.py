"""One PettingZoo AEC (turn-based) env as arrays: moves in, decision points out.

A :class:`TurnJointEnv` is the AEC counterpart of :class:`~npc_wrapper.joint_env.JointEnv`. It owns
one AEC env with one learner seat; every other seat is an NPC. :meth:`TurnJointEnv.reset` and each
move (:meth:`~TurnJointEnv.step` for the learner, :meth:`~TurnJointEnv.step_npc` for the NPC that
was to move) advance the env to its next *decision point*: a live agent is selected. If it is an
NPC, its observation and action mask go to its row of the NPC buffers and ``turn`` names its NPC
group (``turn_row`` its row); if it is the learner, its observation and mask go to the training
slot and ``turn`` is :data:`LEARNER`. Dead steps (``step(None)``) are taken inside. A driver of
``E`` envs thus plays *rounds*: the learners' moves, then, while some env waits on an NPC, one
batched forward per NPC policy over the waiting rows of all envs and :func:`step_npcs`; after each
call :class:`MaskCheck` checks in bulk that every agent to move has a legal action.

The learner's reward for a move is everything it earned from that move up to its next turn (or its
episode's end): the sum of ``rewards[learner]`` after every ``env.step`` in between, its own move's,
the NPCs' moves' and the dead steps' (PettingZoo's ``aec_to_parallel`` sums the same way). That is
what ``last()`` returns as the cumulative reward in envs that zero the mover's
``_cumulative_rewards`` (RLCard poker, rock-paper-scissors), and it is also right in the classic
envs that never zero it (tic-tac-toe, connect four, chess), where ``last()`` would give each turn
the whole episode's reward so far. Rewards earned before the learner's first move of an episode
are added to that move's reward, so an episode's rewards sum to the learner's total in the env.

The learner's episode ends at its dead step (``last()`` reports it terminated or truncated), or
when it leaves ``env.agents`` without one (terminated). Its flags (both may be set:
PettingZoo's ``TerminateIllegalWrapper`` sets both on an illegal move), final reward and
terminal observation are recorded, the env resets itself, draws the learner's seat and advances
to the learner's first turn of the new episode, playing the NPC moves that come first. An
episode that ends before the learner's first move (the other poker players fold) has no move to
credit: it is counted in ``no_move`` (its learner reward in ``no_move_return``) and the env
resets again.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import AECEnv
from pettingzoo.utils import BaseWrapper
from pettingzoo.utils.wrappers import (
    AssertOutOfBoundsWrapper,
    CaptureStdoutWrapper,
    ClipOutOfBoundsWrapper,
    OrderEnforcingWrapper,
    TerminateIllegalWrapper,
)

from npc_wrapper.agents import NPCGroup, _matches, split_agents
from npc_wrapper.masks import MASK_KEY, OBSERVATION_KEY, ActionMask, mask_width, masked_observation_space

__all__ = [
    "LEARNER",
    "SEATS",
    "TurnLayout",
    "TurnBuffers",
    "TurnJointEnv",
    "build_turn_layout",
    "turn_buffer_spaces",
    "reset_turns",
    "step_learners",
    "step_npcs",
    "Reached",
    "MaskCheck",
]

AgentID = Hashable

#: ``turn`` when the learner is to move (otherwise it is the NPC group to move).
LEARNER = -1
#: How the learner's seat is chosen: always the same, or drawn at every episode start.
SEATS = ("fixed", "random")
#: Episodes in a row that may end before the learner's first move before the env is called broken.
MAX_NO_MOVE_EPISODES = 1000
#: Mixed into an env's reset seed for its seat draws, so they are not the env's own random stream.
_SEAT_STREAM = 0x5EA7
#: The env attributes read at every move.
_READS = frozenset({"agents", "agent_selection", "terminations", "truncations", "rewards", "infos"})
#: ``__getattr__`` methods that forward to the wrapped env unchanged (for the names in ``_READS``).
_FORWARDING = (BaseWrapper.__getattr__, OrderEnforcingWrapper.__getattr__)
#: PettingZoo's own wrappers, which never set the names in ``_READS`` on themselves (TerminateIllegalWrapper
#: sets them on ``env.unwrapped``): no check after each move.
_KNOWN_WRAPPERS = (
    BaseWrapper,
    OrderEnforcingWrapper,
    AssertOutOfBoundsWrapper,
    TerminateIllegalWrapper,
    ClipOutOfBoundsWrapper,
    CaptureStdoutWrapper,
)


def _plain_wrappers(env: Any) -> list[Any] | None:
    """The wrappers between ``env`` and ``env.unwrapped`` if every one of them forwards the reads of
    ``_READS`` to the env it wraps unchanged (a plain ``__getattr__``, no class attribute or property
    of those names); ``None`` otherwise. An instance attribute of those names is checked per move.
    """
    chain, bottom = [], env.unwrapped
    while env is not bottom:
        kind = type(env)
        if (
            len(chain) > 64  # not a chain of wrappers that ends
            or kind.__getattribute__ is not object.__getattribute__
            or getattr(kind, "__getattr__", BaseWrapper.__getattr__) not in _FORWARDING
            or any(not _READS.isdisjoint(vars(k)) for k in kind.__mro__)
            or not isinstance(getattr(env, "__dict__", {}).get("env"), AECEnv)
        ):
            return None
        chain.append(env)
        env = env.env
    return chain


def _maskable(space: spaces.Space) -> bool:
    return isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary))


@dataclass(frozen=True)
class TurnLayout:
    """Who plays which seat of a turn-based env, and where each seat lives in the buffers.

    :param possible_agents: the env's ``possible_agents`` (its seats)
    :param seats: positions in ``possible_agents`` the learner may play (one with ``seat="fixed"``)
    :param observation_spaces: each seat's observation space as the env declares it
    :param action_spaces: each seat's action space
    :param observation_space: the learner's served observation space (the ``observation`` entry of a
        classic ``Dict`` observation)
    :param action_space: the learner's action space
    :param groups: the NPC rows: group ``g`` has one row per agent of ``groups[g].agents``, with the
        served observation space; with random seats the learner's seats have rows too (the row of
        the seat the learner plays is idle that episode)
    """

    possible_agents: tuple[AgentID, ...]
    seats: tuple[int, ...]
    observation_spaces: tuple[spaces.Space, ...]
    action_spaces: tuple[spaces.Space, ...]
    observation_space: spaces.Space
    action_space: spaces.Space
    groups: tuple[NPCGroup, ...]

    @property
    def n_agents(self) -> int:
        return len(self.possible_agents)

    @property
    def n_train(self) -> int:
        """Training slots per env: one, the learner (whichever seat it plays)."""
        return 1

    @property
    def training(self) -> tuple[AgentID, ...]:
        """The seats the learner may play."""
        return tuple(self.possible_agents[i] for i in self.seats)

    @property
    def masked(self) -> bool:
        """Whether the env gives the learner action masks in its observations (more may come in infos)."""
        return masked_observation_space(self.observation_spaces[self.seats[0]]) is not None

    @property
    def mask_width(self) -> int:
        """The learner's mask width (0 for action spaces without discrete choices)."""
        return mask_width(self.action_space) if _maskable(self.action_space) else 0

    def row_of(self, agent: AgentID) -> tuple[int, int] | None:
        """``(group, row)`` of ``agent``'s NPC row, or ``None`` when it has none (the fixed learner)."""
        for g, group in enumerate(self.groups):
            if agent in group.agents:
                return g, group.agents.index(agent)
        return None


def _served(agent: AgentID, raw: spaces.Space, act: spaces.Space) -> spaces.Space:
    """The observation space served for ``agent``: the ``observation`` entry of a classic Dict."""
    try:
        inner = masked_observation_space(raw)
    except ValueError as e:
        raise ValueError(f"agent {agent!r}: {e}") from None
    if inner is not None and raw[MASK_KEY].shape != (mask_width(act),):
        raise ValueError(
            f"agent {agent!r} has an '{MASK_KEY}' of shape {raw[MASK_KEY].shape} in its observation space, "
            f"but its action space {act} needs masks of shape {(mask_width(act),)} (one flag per action)"
        )
    served = raw if inner is None else inner
    if served.shape is None or act.shape is None:
        raise ValueError(
            f"agent {agent!r} has observation space {raw} and action space {act}; npc_wrapper batches agents "
            "as arrays: wrap the env so they use Box spaces (a classic Dict of 'observation' and "
            "'action_mask' is read as it is)"
        )
    return served


def _group_npcs(
    agents: Sequence[AgentID],
    npc: Any,
    learner_seats: Sequence[AgentID],
    served: Mapping[AgentID, spaces.Space],
    action: Mapping[AgentID, spaces.Space],
    possible: Sequence[AgentID],
    masked: Mapping[AgentID, bool],
) -> tuple[NPCGroup, ...]:
    """Group the seats that NPCs may play by their spec (the first matching key of a mapping) and spaces."""
    if isinstance(npc, Mapping):
        patterns = list(npc)
        unmatched = [a for a in agents if not any(_matches(a, p) for p in patterns)]
        if unmatched:
            raise ValueError(
                f"NPC seats {unmatched} match no key of the npc mapping {patterns}; add a pattern such as '*'"
            )
        spec_key = {a: next(p for p in patterns if _matches(a, p)) for a in agents}
        # A key that drives no NPC seat is a mistake (a typo, or the fixed learner's seat), unless it
        # is a final catch-all such as "*".
        unused = [
            p for p in patterns
            if p not in spec_key.values() and (p != patterns[-1] or not all(_matches(a, p) for a in possible))
        ]
        if unused:
            raise ValueError(
                f"npc mapping keys {unused} drive no NPC seat (the learner plays {list(learner_seats)}); the "
                f"NPC seats are {list(agents)}: remove those keys or fix the patterns"
            )
    else:
        spec_key = dict.fromkeys(agents)
    # Specs and spaces are compared by identity and equality (spaces are not hashable): list positions.
    keys: list[Any] = []
    pairs: list[tuple[spaces.Space, spaces.Space]] = []
    grouped: dict[tuple[int, int], list[AgentID]] = {}
    for a in agents:
        kid = next((i for i, k in enumerate(keys) if k is spec_key[a]), None)
        if kid is None:
            keys.append(spec_key[a])
            kid = len(keys) - 1
        pair = (served[a], action[a])
        sid = next((i for i, p in enumerate(pairs) if p == pair), None)
        if sid is None:
            pairs.append(pair)
            sid = len(pairs) - 1
        grouped.setdefault((kid, sid), []).append(a)
    return tuple(
        NPCGroup(
            agents=tuple(members),
            spec=npc[keys[kid]] if isinstance(npc, Mapping) else npc,
            observation_space=pairs[sid][0],
            action_space=pairs[sid][1],
            masked=any(masked[a] for a in members),
        )
        for (kid, sid), members in grouped.items()
    )


def build_turn_layout(
    env: Any,
    npc: Any,
    training_agents_pct: float | None = 0.5,
    training_agents: Sequence[Any] | None = None,
    seat: str = "fixed",
) -> TurnLayout:
    """Pick the learner's seat(s) of a turn-based env and lay out the NPC rows.

    :param env: a PettingZoo ``AECEnv`` (only ``possible_agents`` and the space getters are used)
    :param npc: one NPC spec for every NPC seat, or a mapping from agent name or glob pattern to spec
        (the first matching key wins; every seat an NPC may play must match one)
    :param training_agents_pct: picks the learner's seat as :func:`~npc_wrapper.split_agents` does;
        it must select exactly one agent
    :param training_agents: the learner's seat by name or pattern (overrides the percentage)
    :param seat: ``"fixed"``: the learner always plays that seat; ``"random"``: each episode it plays
        a seat drawn uniformly among those whose observation and action spaces equal that seat's

    Example::

        >>> from pettingzoo.classic import connect_four_v3
        >>> from npc_wrapper.turn_env import build_turn_layout
        >>> layout = build_turn_layout(connect_four_v3.env(), "random", seat="random")
        >>> layout.seats, layout.observation_space.shape, layout.mask_width
        ((0, 1), (6, 7, 2), 7)
        >>> [group.agents for group in layout.groups]  # one NPC row per seat
        [('player_0', 'player_1')]
    """
    if seat not in SEATS:
        raise ValueError(f"seat must be one of {list(SEATS)}, got {seat!r}")
    possible = tuple(env.possible_agents)
    if len(set(possible)) != len(possible):
        raise ValueError(f"the env's possible_agents has duplicates: {list(possible)}")
    raw = {a: env.observation_space(a) for a in possible}
    action = {a: env.action_space(a) for a in possible}
    served = {a: _served(a, raw[a], action[a]) for a in possible}
    train, _ = split_agents(possible, training_agents_pct, training_agents)
    if len(train) != 1:
        raise ValueError(
            f"a turn-based (AEC) env has one learner per env and its other seats are NPCs, but the training "
            f"agents selected are {train}: name one seat with training_agents=[{str(possible[0])!r}] (or a "
            f"training_agents_pct that rounds to one of the {len(possible)} agents), and pass seat='random' "
            "to let the learner play every seat"
        )
    learner = train[0]
    if seat == "random":
        seats = tuple(
            i for i, a in enumerate(possible) if raw[a] == raw[learner] and action[a] == action[learner]
        )
    else:
        seats = (possible.index(learner),)
    npc_seats = [a for i, a in enumerate(possible) if len(seats) > 1 or i not in seats]
    if not npc_seats:
        raise ValueError(f"the env has a single agent {learner!r}: a turn-based game needs NPC seats")
    masked = {a: masked_observation_space(raw[a]) is not None for a in possible}
    groups = _group_npcs(npc_seats, npc, [possible[i] for i in seats], served, action, possible, masked)
    return TurnLayout(
        possible_agents=possible,
        seats=seats,
        observation_spaces=tuple(raw[a] for a in possible),
        action_spaces=tuple(action[a] for a in possible),
        observation_space=served[learner],
        action_space=action[learner],
        groups=groups,
    )


def _box(shape: tuple[int, ...], dtype: Any) -> spaces.Box:
    floating = np.dtype(dtype).kind == "f"
    return spaces.Box(-np.inf if floating else 0, np.inf if floating else 1, shape=shape, dtype=dtype)


def turn_buffer_spaces(layout: TurnLayout) -> dict[str, spaces.Box]:
    """Shape and dtype of each per-env buffer, as Box spaces (also a worker's shared-memory layout).

    Flags are int8 (viewed as bool): shared memory has no bool Box.
    """
    obs = layout.observation_space
    out = {
        "train_obs": _box(obs.shape, obs.dtype),
        "train_mask": _box((layout.mask_width,), np.int8),
        "final_obs": _box(obs.shape, obs.dtype),
        "final_mask": _box((layout.mask_width,), np.int8),
        "reward": _box((1,), np.float64),
        "npc_reward": _box((1,), np.float64),
        "terminated": _box((1,), np.int8),
        "truncated": _box((1,), np.int8),
        "new_episode": _box((1,), np.int8),
        "turn": _box((1,), np.int32),
        "turn_row": _box((1,), np.int32),
        "seat": _box((1,), np.int32),
        "ended_seat": _box((1,), np.int32),
        "no_move": _box((1,), np.int32),
        "no_move_return": _box((1,), np.float64),
    }
    for g, group in enumerate(layout.groups):
        width = mask_width(group.action_space) if _maskable(group.action_space) else 0
        obs = group.observation_space
        out[f"npc_obs_{g}"] = _box((len(group.agents), *obs.shape), obs.dtype)
        out[f"npc_mask_{g}"] = _box((len(group.agents), width), np.int8)
    return out


_FLAGS = ("train_mask", "final_mask", "terminated", "truncated", "new_episode")


@dataclass
class TurnBuffers:
    """Views into the buffers of one turn-based env (or a batch of them: leading axis = env).

    The outcome of the learner's step, valid once the env waits on the learner again (after the NPC
    moves that follow the learner's own):

    * ``train_obs`` / ``train_mask``: the learner's observation and legal actions at its turn
    * ``reward`` / ``npc_reward``: what the learner / the NPC seats together earned in the step
    * ``terminated`` / ``truncated`` / ``final_obs`` / ``ended_seat``: the learner's episode ended
      in the step: its flags, terminal observation and the seat it played; ``final_mask``: the
      ``action_mask`` of that terminal observation where it is a classic ``Dict`` (else untouched)
    * ``no_move`` / ``no_move_return``: episodes that ended in the step before the learner's first move
      (reset again), and the learner's reward in them
    * ``seat``: the learner's seat (position in ``possible_agents``) in the current episode

    Written at every call: ``turn`` (:data:`LEARNER`, or the NPC group to move), ``turn_row`` (its
    row), ``npc_obs`` / ``npc_mask`` (that row's observation and legal actions) and ``new_episode``
    (the env started an episode in this call: its NPC rows start an episode).
    """

    train_obs: np.ndarray
    train_mask: np.ndarray
    final_obs: np.ndarray
    final_mask: np.ndarray
    reward: np.ndarray
    npc_reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    new_episode: np.ndarray
    turn: np.ndarray
    turn_row: np.ndarray
    seat: np.ndarray
    ended_seat: np.ndarray
    no_move: np.ndarray
    no_move_return: np.ndarray
    npc_obs: list[np.ndarray]
    npc_mask: list[np.ndarray]

    @classmethod
    def allocate(cls, layout: TurnLayout, leading: tuple[int, ...] = ()) -> TurnBuffers:
        specs = turn_buffer_spaces(layout)
        arrays = {k: np.zeros(leading + s.shape, dtype=s.dtype) for k, s in specs.items()}
        return cls.from_arrays(arrays, len(layout.groups))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_groups: int) -> TurnBuffers:
        """Views of ``arrays`` (as :func:`turn_buffer_spaces` lays them out), int8 flags as bool."""
        named = {
            k: a.view(np.bool_) if k in _FLAGS else a
            for k, a in arrays.items() if not k.startswith(("npc_obs_", "npc_mask_"))
        }
        return cls(
            **named,
            npc_obs=[arrays[f"npc_obs_{g}"] for g in range(n_groups)],
            npc_mask=[arrays[f"npc_mask_{g}"].view(np.bool_) for g in range(n_groups)],
        )

    def as_arrays(self) -> dict[str, np.ndarray]:
        """The buffers by name, bool views as int8 (the inverse of :meth:`from_arrays`)."""
        out = {
            k: v.view(np.int8) if k in _FLAGS else v
            for k, v in vars(self).items() if k not in ("npc_obs", "npc_mask")
        }
        out.update({f"npc_obs_{g}": a for g, a in enumerate(self.npc_obs)})
        out.update({f"npc_mask_{g}": a.view(np.int8) for g, a in enumerate(self.npc_mask)})
        return out

    def at(self, i: int) -> TurnBuffers:
        """The views of env ``i`` of a batch."""
        return TurnBuffers.from_arrays({k: a[i] for k, a in self.as_arrays().items()}, len(self.npc_obs))


def _check_same_env(env: Any, layout: TurnLayout) -> None:
    """Every env must be the kind of env the layout was built from (the first one)."""
    where = "an env built by env_fn differs from the first env, from which the seats were laid out"
    if tuple(env.possible_agents) != layout.possible_agents:
        raise ValueError(
            f"{where}: its possible_agents are {list(env.possible_agents)}, the first env's "
            f"{list(layout.possible_agents)}; every env_fn must build the same kind of env"
        )
    for a, obs, act in zip(layout.possible_agents, layout.observation_spaces, layout.action_spaces):
        if env.observation_space(a) != obs or env.action_space(a) != act:
            raise ValueError(
                f"{where}: agent {a!r} has observation space {env.observation_space(a)} and action space "
                f"{env.action_space(a)} there, {obs} and {act} in the first env; every env_fn must build the "
                "same kind of env"
            )


class _Seat:
    """How one agent's observation and mask are read, and (when an NPC may play it) its NPC row."""

    __slots__ = ("agent", "dict_obs", "mask", "group", "row", "obs_view", "mask_view")

    def __init__(self, agent: AgentID, raw: spaces.Space, act: spaces.Space) -> None:
        self.agent = agent
        self.dict_obs = masked_observation_space(raw) is not None
        self.mask = ActionMask(act) if _maskable(act) else None
        self.group = self.row = -1
        self.obs_view: np.ndarray | None = None
        self.mask_view: np.ndarray | None = None


class TurnJointEnv:
    """A PettingZoo ``AECEnv`` played a decision point at a time, with arrays.

    :param env: the PettingZoo AEC env
    :param layout: the seats and NPC rows (see :func:`build_turn_layout`)
    :param buffers: this env's buffers (written in place)

    Example (a driver for one env, the NPC playing its first legal move)::

        >>> import numpy as np
        >>> from pettingzoo.classic import tictactoe_v3
        >>> from npc_wrapper.turn_env import LEARNER, TurnBuffers, TurnJointEnv, build_turn_layout
        >>> env = tictactoe_v3.env()
        >>> layout = build_turn_layout(env, "random", training_agents=["player_2"])
        >>> buf = TurnBuffers.allocate(layout)
        >>> turn = TurnJointEnv(env, layout, buf)
        >>> turn.reset(seed=0)  # player_1 opens: the NPC is to move
        >>> int(buf.turn[0]), int(buf.turn_row[0])
        (0, 0)
        >>> turn.step_npc(int(np.argmax(buf.npc_mask[0][0])))  # the NPC takes the top-left corner
        >>> int(buf.turn[0]) == LEARNER, buf.train_obs[0, 0].tolist(), buf.train_mask.astype(int).tolist()
        (True, [0, 1], [0, 1, 1, 1, 1, 1, 1, 1, 1])
    """

    def __init__(self, env: Any, layout: TurnLayout, buffers: TurnBuffers) -> None:
        _check_same_env(env, layout)
        self.env = env
        # The per-move reads (agents, rewards...) go to the env that owns them: read through the
        # wrappers' __getattr__ chain, they cost as much as the env's own move. While no wrapper
        # has an attribute of that name, the unwrapped env's is the one the chain would return.
        wrappers = _plain_wrappers(env)
        self._reads = env if wrappers is None else env.unwrapped
        # The own attributes of each wrapper that may take one of those names.
        self._wrapper_attrs = [vars(w) for w in wrappers or () if type(w) not in _KNOWN_WRAPPERS]
        self.layout = layout
        self.buf = buffers
        self._seats = {
            a: _Seat(a, raw, act)
            for a, raw, act in zip(layout.possible_agents, layout.observation_spaces, layout.action_spaces)
        }
        for g, group in enumerate(layout.groups):
            for j, a in enumerate(group.agents):
                seat = self._seats[a]
                seat.group, seat.row = g, j
                seat.obs_view, seat.mask_view = buffers.npc_obs[g][j, ...], buffers.npc_mask[g][j, ...]
        self._learner_seat = self._seats[layout.possible_agents[layout.seats[0]]]
        self._discrete = isinstance(layout.action_space, spaces.Discrete)
        self._seat_rng = np.random.default_rng()
        self._acc = 0.0  # the learner's reward since its last move (or its episode's start)
        self._npc_acc = 0.0  # the NPC seats' rewards over the same steps
        self._moved = False  # the learner has moved in this episode
        self._open = False  # a learner's step whose outcome is not written yet
        self._no_move_streak = 0
        # The buffers' scalars are written only when they change (a numpy item write costs about as
        # much as the rest of a move's bookkeeping): their values, or whether they may be set, here.
        buffers.turn[0] = self._turn = LEARNER
        self._row = -1
        self._flags = True  # terminated / truncated may be set
        self._new = True  # new_episode may be set
        self._no_move = 0  # episodes without a learner's move since its last move, and its reward in them
        self._no_move_return = 0.0
        self._no_move_shown = True  # no_move / no_move_return may be nonzero
        #: The learner's info where its last step's outcome was decided (its next turn, or its dead
        #: step: a copy there, as the reset may refill the env's dicts); the env's own dict otherwise.
        self.step_info: dict[str, Any] | None = None
        #: The learner's info at its first turn of the current episode (the env's own dict).
        self.reset_info: dict[str, Any] | None = None

    @property
    def learner(self) -> AgentID:
        """The seat the learner plays in the current episode."""
        return self._learner_seat.agent

    # ------------------------------------------------------------------ moves
    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        """Reset the env (a seed also reseeds the seat draws) and advance to its first decision point."""
        buf = self.buf
        buf.reward[0] = buf.npc_reward[0] = 0.0
        buf.terminated[0] = buf.truncated[0] = False
        self._flags = False
        self._acc = self._npc_acc = self._no_move_return = 0.0
        self._open = False
        self._no_move = self._no_move_streak = 0
        if seed is not None:
            self._seat_rng = np.random.default_rng([seed, _SEAT_STREAM])
        self._start(seed, options)
        if not self._decide():  # a dead agent first: unusual right after a reset, but allowed
            self.env.step(None)
            self.advance()
        self.step_info = self.reset_info

    def step(self, action: Any) -> None:
        """Play the learner's move and advance to the next decision point.

        The move goes to the env as it is: an illegal one gets the env's own rule (PettingZoo
        classic ends the game and penalises the mover).

        :param action: an int for ``Discrete`` actions (numpy integers are taken too)
        """
        self.play(action)
        self.advance()

    def step_npc(self, action: Any) -> None:
        """Play the move of the NPC that is to move (``turn`` / ``turn_row``) and advance."""
        self.play_npc(action)
        self.advance()

    def play(self, action: Any) -> None:
        """The first half of :meth:`step`: send the learner's move to the env; :meth:`advance` must follow.

        A batch plays every env's move, then advances every env: each half runs the same code over
        all envs in a row, which is measurably faster than alternating them env by env.
        """
        if self._turn != LEARNER:
            raise RuntimeError(
                f"step() / play() play the learner's move, but NPC {self._npc_to_move()!r} is to move: "
                "call step_npc()"
            )
        if type(action) is not int:
            action = self._learner_action(action)
        if self._new:
            self.buf.new_episode[0] = self._new = False
        self._no_move, self._no_move_return = 0, 0.0
        self._open = self._moved = True
        self.env.step(action)

    def play_npc(self, action: Any) -> None:
        """The first half of :meth:`step_npc` (see :meth:`play`)."""
        if self._turn == LEARNER:
            raise RuntimeError(
                f"step_npc() plays an NPC's move, but the learner ({self.learner!r}) is to move: call step()"
            )
        if self._new:
            self.buf.new_episode[0] = self._new = False
        self.env.step(action)

    def advance(self) -> None:
        """After the env has stepped: add the step's rewards to the learner's and the NPC seats' sums, and
        play the dead agents' ``None`` steps (adding theirs), up to the next decision point."""
        while True:
            if self._wrapper_attrs:
                self._check_reads()
            rewards = self._reads.rewards
            mine = rewards.get(self._learner_seat.agent, 0.0)
            self._acc += mine
            self._npc_acc += sum(rewards.values()) - mine
            if self._decide():
                return
            self.env.step(None)

    # ------------------------------------------------------------------ internals
    def _start(self, seed: int | None, options: dict[str, Any] | None) -> None:
        """Draw the learner's seat and reset the env (a new episode)."""
        seats = self.layout.seats
        i = seats[int(self._seat_rng.integers(len(seats)))] if len(seats) > 1 else seats[0]
        self._learner_seat = self._seats[self.layout.possible_agents[i]]
        self.buf.seat[0] = i
        self.buf.new_episode[0] = self._new = True
        self._moved = False
        self.env.reset(seed=seed, options=options)
        if self._wrapper_attrs:
            self._check_reads()

    def _check_reads(self) -> None:
        """Read through the wrappers from now on if one of them has taken an attribute of its own (as
        SuperSuit's wrappers do, some at their first step)."""
        if self._reads is not self.env and not all(_READS.isdisjoint(own) for own in self._wrapper_attrs):
            self._reads = self.env

    def _decide(self) -> bool:
        """Write the decision point the env is at (the learner's turn or an NPC's) and return True, or
        return False when a dead agent other than the learner is to step. The learner's end finishes
        its episode and restarts the env, whose new episode is looked at in turn."""
        while True:
            learner = self._learner_seat.agent
            reads = self._reads
            if learner not in reads.agents:  # it left without a dead step (or every agent did)
                self._finish(True, False, {})
                continue
            agent = reads.agent_selection
            if reads.terminations[agent] or reads.truncations[agent]:
                if agent != learner:
                    return False
                terminated, truncated = bool(reads.terminations[agent]), bool(reads.truncations[agent])
                self._finish(terminated, truncated, reads.infos[agent])
                continue
            buf = self.buf
            if agent == learner:
                seat = self._learner_seat
                info = reads.infos[agent]
                self._observe(seat, buf.train_obs, buf.train_mask, info)
                if self._open:
                    buf.reward[0], buf.npc_reward[0] = self._acc, self._npc_acc
                    self._acc = self._npc_acc = 0.0
                    if self._flags:
                        buf.terminated[0] = buf.truncated[0] = self._flags = False
                    self._open = False
                    self.step_info = info
                if not self._moved:
                    self.reset_info = info
                if self._no_move or self._no_move_shown:
                    buf.no_move[0], buf.no_move_return[0] = self._no_move, self._no_move_return
                    self._no_move_shown = self._no_move > 0
                if self._turn != LEARNER:
                    buf.turn[0] = self._turn = LEARNER
                return True
            seat = self._seats[agent]
            if seat.dict_obs:  # a classic env's NPC: the most common move, inlined (as in _observe)
                obs = self.env.observe(agent)
                seat.obs_view[...] = obs[OBSERVATION_KEY]
                mask = obs[MASK_KEY]
                if type(mask) is np.ndarray and mask.shape == seat.mask.shape:
                    seat.mask_view[...] = mask
                else:
                    seat.mask.write(mask, seat.mask_view, agent)  # converts, or names the agent in an error
            else:
                self._observe(seat, seat.obs_view, seat.mask_view, None)
            if seat.group != self._turn:
                buf.turn[0] = self._turn = seat.group
            if seat.row != self._row:
                buf.turn_row[0] = self._row = seat.row
            return True

    def _observe(
        self, seat: _Seat, obs_out: np.ndarray, mask_out: np.ndarray, info: dict[str, Any] | None
    ) -> None:
        """Write the observation and mask of ``seat``, which is to move, into the given buffers."""
        obs = self.env.observe(seat.agent)
        if seat.dict_obs:  # a classic env: the most common move
            obs_out[...] = obs[OBSERVATION_KEY]
            mask = obs[MASK_KEY]
            if type(mask) is np.ndarray and mask.shape == seat.mask.shape:
                mask_out[...] = mask
            else:
                seat.mask.write(mask, mask_out, seat.agent)  # converts, or names the agent in an error
            return
        obs_out[...] = obs
        if seat.mask is not None:
            mask = (self._reads.infos[seat.agent] if info is None else info).get(MASK_KEY)
            if mask is None:
                mask_out[...] = True
            else:
                seat.mask.write(mask, mask_out, seat.agent)

    def _finish(self, terminated: bool, truncated: bool, info: dict[str, Any]) -> None:
        """The learner's episode ended: record it (or count it, if the learner never moved) and restart."""
        buf, seat = self.buf, self._learner_seat
        if self._moved:
            obs = self.env.observe(seat.agent)
            if seat.dict_obs:
                buf.final_obs[...] = obs[OBSERVATION_KEY]
                seat.mask.write(obs[MASK_KEY], buf.final_mask, seat.agent)
            else:
                buf.final_obs[...] = obs
            buf.terminated[0], buf.truncated[0] = terminated, truncated
            self._flags = True
            buf.reward[0], buf.npc_reward[0] = self._acc, self._npc_acc
            buf.ended_seat[0] = buf.seat[0]
            self.step_info = dict(info)
            self._open = False
            self._no_move_streak = 0
        else:
            self._no_move += 1
            self._no_move_return += self._acc
            self._no_move_streak += 1
            if self._no_move_streak >= MAX_NO_MOVE_EPISODES:
                raise RuntimeError(
                    f"{MAX_NO_MOVE_EPISODES} episodes in a row ended before the learner ({seat.agent!r}) had "
                    "a turn: the env never selects it alive; check its agent order, or train another seat"
                )
        self._acc = self._npc_acc = 0.0
        self._start(None, None)

    def _learner_action(self, action: Any) -> Any:
        """The learner's action as the env takes it: a Python int for ``Discrete`` actions."""
        if not self._discrete:
            return action
        if isinstance(action, np.ndarray) and action.shape == ():
            action = action[()]
        if isinstance(action, np.integer):
            return int(action)
        raise TypeError(
            f"the learner's action {action!r} for agent {self.learner!r} is a {type(action).__name__}, not "
            f"an int; its action space {self.layout.action_space} takes ints"
        )

    def _npc_to_move(self) -> AgentID:
        return self.layout.groups[int(self.buf.turn[0])].agents[int(self.buf.turn_row[0])]

    def close(self) -> None:
        self.env.close()


#: What a batch call tells about the envs that came to their learner's turn in it: env index ->
#: (the learner's step info, its reset info), the env's own dicts.
Reached = dict[int, tuple["dict[str, Any] | None", "dict[str, Any] | None"]]


def _reached(joints: Sequence[TurnJointEnv], envs: Sequence[int], first: int) -> Reached:
    """The learner infos of those of ``envs`` now at their learner's turn (keys offset by ``first``)."""
    return {
        first + e: (joints[e].step_info, joints[e].reset_info) for e in envs if joints[e]._turn == LEARNER
    }


def reset_turns(
    joints: Sequence[TurnJointEnv],
    seeds: Sequence[int | None],
    options: Sequence[dict[str, Any] | None],
    mask: Sequence[bool] | None = None,
    first: int = 0,
) -> Reached:
    """Reset env ``e`` with ``seeds[e]`` and ``options[e]`` where ``mask`` is set (default: every env).

    :param first: added to the env indices of the result (a worker's share of the envs)
    """
    envs = [e for e in range(len(joints)) if mask is None or mask[e]]
    for e in envs:
        joints[e].reset(seed=seeds[e], options=options[e])
    return _reached(joints, envs, first)


def step_learners(
    joints: Sequence[TurnJointEnv], actions: np.ndarray, active: Sequence[bool] | None = None, first: int = 0
) -> Reached:
    """Play each env's learner move, ``actions[e]`` for env ``e`` (every env is at its learner's turn).

    :param active: which envs move (default: all); the others stay as they are, their learner's turn
        reported with its reset info as the step info (the delivery of a NEXT_STEP autoreset)
    :param first: added to the env indices of the result
    """
    moves = actions.tolist() if isinstance(joints[0].layout.action_space, spaces.Discrete) else list(actions)
    held: Reached = {}
    moving = []
    try:
        for e, (joint, move) in enumerate(zip(joints, moves)):
            if active is None or active[e]:
                joint.play(move)
                moving.append(joint)
            else:
                held[first + e] = (joint.reset_info, joint.reset_info)
    finally:  # a move refused midway (not an int): the envs that played still reach their next turn
        for joint in moving:
            joint.advance()
    return {**_reached(joints, range(len(joints)), first), **held}


def step_npcs(
    joints: Sequence[TurnJointEnv],
    npc_actions: Sequence[np.ndarray],
    first: int = 0,
    waiting: Sequence[int] | None = None,
) -> Reached:
    """In every env waiting on an NPC, play that NPC's move: ``npc_actions[g][e]`` for env ``e``, whose
    NPC to move is in group ``g``.

    :param npc_actions: one ``(len(joints), *action_shape)`` array per NPC group (an env has one NPC to
        move at a time); only the entries of the envs waiting on that group are read
    :param first: added to the env indices of the result
    :param waiting: the envs waiting on an NPC, where the caller knows them (default: every env is asked)
    """
    moves = [
        a.tolist() if isinstance(group.action_space, spaces.Discrete) else list(a.copy())
        for a, group in zip(npc_actions, joints[0].layout.groups)
    ]
    if waiting is None:
        waiting = [e for e, joint in enumerate(joints) if joint._turn != LEARNER]
    played = []
    try:
        for e in waiting:
            joint = joints[e]
            joint.play_npc(moves[joint._turn][e])
            played.append(joint)
    finally:  # as in step_learners: no env is left between its move and its next decision point
        for joint in played:
            joint.advance()
    return _reached(joints, waiting, first)


class MaskCheck:
    """Checks, for a batch of envs at once, that the agent to move in each has a legal action: an
    all-false mask is the env's bug, and would otherwise surface as a sampling error or an illegal move.

    :param layout: the envs' layout

    Example::

        >>> from pettingzoo.classic import tictactoe_v3
        >>> from npc_wrapper.turn_env import MaskCheck, TurnBuffers, TurnJointEnv, build_turn_layout
        >>> layout = build_turn_layout(tictactoe_v3.env(), "random", training_agents=["player_2"])
        >>> buf = TurnBuffers.allocate(layout, (1,))
        >>> TurnJointEnv(tictactoe_v3.env(), layout, buf.at(0)).reset(seed=0)
        >>> MaskCheck(layout)(buf)  # player_1, an NPC, is to move and has 9 legal moves
        >>> buf.npc_mask[0][0, 0] = False  # as an env with a bug would give it
        >>> MaskCheck(layout)(buf)
        Traceback (most recent call last):
        ...
        ValueError: the env gave agent 'player_1' an action mask that allows no action ...
    """

    def __init__(self, layout: TurnLayout) -> None:
        self.layout = layout
        #: The learner's and each NPC group's masks (``None`` for action spaces without masks).
        self.learner_masks = ActionMask(layout.action_space) if _maskable(layout.action_space) else None
        self.npc_masks = [
            ActionMask(g.action_space) if _maskable(g.action_space) else None for g in layout.groups
        ]

    def __call__(self, buffers: TurnBuffers) -> None:
        """:param buffers: the batch's buffers (leading axis = env), after a call of every env"""
        turn = buffers.turn[:, 0]
        self.learners(buffers, np.flatnonzero(turn == LEARNER))
        for g in range(len(self.npc_masks)):
            envs = np.flatnonzero(turn == g)
            rows = buffers.turn_row[envs, 0]
            self.npcs(g, buffers.npc_mask[g][envs, rows], rows)

    def learners(self, buffers: TurnBuffers, envs: np.ndarray) -> None:
        """Check the masks of the learners of ``envs`` (at their turn)."""
        if self.learner_masks is not None and len(envs):
            agents = self.layout.possible_agents
            self.learner_masks.check(buffers.train_mask[envs], lambda i: agents[buffers.seat[envs[i], 0]])

    def npcs(self, g: int, masks: np.ndarray, rows: np.ndarray) -> None:
        """Check the masks of group ``g``'s NPCs to move (``masks``: theirs, ``rows``: their rows in their
        envs, ``0..len(group)-1``)."""
        spec = self.npc_masks[g]
        if spec is not None and len(masks):
            agents = self.layout.groups[g].agents
            spec.check(masks, lambda i: agents[rows[i] % len(agents)])
