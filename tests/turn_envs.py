"""Helpers for the turn-based (AEC) tests: a recording wrapper around real PettingZoo AEC envs, and a
small driver that plays E :class:`~npc_wrapper.turn_env.TurnJointEnv` s in rounds, one batched NPC
move per NPC group per round, as the engine will.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pettingzoo.utils import BaseWrapper

from npc_wrapper.masks import MASK_KEY, OBSERVATION_KEY
from npc_wrapper.turn_env import (
    LEARNER,
    MaskCheck,
    TurnBuffers,
    TurnJointEnv,
    build_turn_layout,
    step_learners,
    step_npcs,
)

__all__ = ["LearnerStep", "Move", "RecordingAEC", "TurnDriver", "random_legal", "first_legal"]

#: An NPC or learner policy of the tests: ``(obs, mask, rng) -> actions`` over a batch of rows.
BatchPolicy = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def random_legal(obs: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random legal action per row."""
    return np.where(mask, rng.random(mask.shape), -1.0).argmax(axis=1)


def first_legal(obs: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The lowest legal action per row."""
    return mask.argmax(axis=1)


@dataclass
class Move:
    """One ``step`` of a recorded env, as the agent to move saw it just before."""

    episode: int
    agent: Any
    action: Any
    dead: bool
    obs: np.ndarray | None
    mask: np.ndarray | None
    #: ``last()``'s cumulative reward of the agent to move.
    cumulative: float


class RecordingAEC(BaseWrapper):
    """Records every ``step`` (who moved, what it saw, its mask, the action) and every ``reset`` (and,
    at each reset, every agent's final cumulative reward and observation of the episode before).

    Observations are recorded as the env gives them to the agent to move (``observe(agent)``), so the
    tests can check the learner's observations against the env's own view of each seat.
    """

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.moves: list[Move] = []
        self.seeds: list[int | None] = []
        #: Per ended episode: each agent's ``_cumulative_rewards`` entry at its dead step, or at the reset
        #: after the episode for agents without one.
        self.final_cumulative: list[dict[Any, float]] = []
        self._dead_cumulative: dict[Any, float] = {}
        #: Per ended episode: each agent's last observation (its ``observation`` entry).
        self.final_obs: list[dict[Any, np.ndarray]] = []

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        if self.seeds:
            self.final_cumulative.append({**self._dead_cumulative, **self.env._cumulative_rewards})
            self._dead_cumulative = {}
            self.final_obs.append({a: self._served(self.env.observe(a))[0] for a in self.env.possible_agents})
        self.seeds.append(seed)
        self.env.reset(seed=seed, options=options)

    @staticmethod
    def _served(obs: Any) -> tuple[np.ndarray, np.ndarray | None]:
        if isinstance(obs, dict):
            return np.array(obs[OBSERVATION_KEY]), np.array(obs[MASK_KEY], dtype=bool)
        return np.array(obs), None

    def step(self, action: Any) -> None:
        agent = self.env.agent_selection
        dead = bool(self.env.terminations[agent] or self.env.truncations[agent])
        obs, mask = (None, None) if dead else self._served(self.env.observe(agent))
        cumulative = float(self.env._cumulative_rewards[agent])
        if dead:
            self._dead_cumulative[agent] = cumulative
        self.moves.append(Move(len(self.seeds) - 1, agent, action, dead, obs, mask, cumulative))
        self.env.step(action)

    def live_moves(self) -> list[Move]:
        return [m for m in self.moves if not m.dead]


@dataclass
class LearnerStep:
    """What the driver saw at one learner move of one env, and what came back."""

    episode: int
    agent: Any
    obs: np.ndarray
    mask: np.ndarray
    action: int
    reward: float = 0.0
    npc_reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    final_obs: np.ndarray | None = None


@dataclass
class TurnDriver:
    """``E`` recorded AEC envs with one learner each, stepped in rounds.

    :param make_env: builds one AEC env (it is wrapped in :class:`RecordingAEC`)
    :param npc: one :data:`BatchPolicy` per NPC group, or one for all
    :param layout_kwargs: passed to :func:`build_turn_layout` (``training_agents``, ``seat``...)
    """

    make_env: Callable[[], Any]
    num_envs: int = 4
    npc: BatchPolicy | Sequence[BatchPolicy] = random_legal
    layout_kwargs: dict[str, Any] = field(default_factory=dict)
    npc_seed: int = 0

    def __post_init__(self) -> None:
        self.envs = [RecordingAEC(self.make_env()) for _ in range(self.num_envs)]
        self.layout = build_turn_layout(self.envs[0], "npc", **self.layout_kwargs)
        self.buf = TurnBuffers.allocate(self.layout, (self.num_envs,))
        self.joints = [TurnJointEnv(env, self.layout, self.buf.at(e)) for e, env in enumerate(self.envs)]
        groups = self.layout.groups
        self.npcs = list(self.npc) if isinstance(self.npc, Sequence) else [self.npc] * len(groups)
        self.npc_actions = [
            np.zeros((self.num_envs, *g.action_space.shape), g.action_space.dtype) for g in groups
        ]
        self.check_masks = MaskCheck(self.layout)
        self.rng = np.random.default_rng(self.npc_seed)
        #: Per env, every learner move and its outcome.
        self.steps: list[list[LearnerStep]] = [[] for _ in range(self.num_envs)]
        #: Per env, the NPC moves: (episode, agent, obs, mask, action).
        self.npc_moves: list[list[tuple[int, Any, np.ndarray, np.ndarray, int]]] = [
            [] for _ in range(self.num_envs)
        ]
        self.rounds = 0
        self.no_move = np.zeros(self.num_envs, dtype=np.int64)
        self.no_move_return = np.zeros(self.num_envs)

    def reset(self, seed: int | None = 0) -> None:
        for e, joint in enumerate(self.joints):
            joint.reset(seed=None if seed is None else seed + e)
        self.check_masks(self.buf)
        self._play_npcs()
        self._record_no_move()

    def _record_no_move(self) -> None:
        """The episodes that ended before the learner's first move since its last move (read once per
        learner step, when every env waits on its learner)."""
        self.no_move += self.buf.no_move[:, 0]
        self.no_move_return += self.buf.no_move_return[:, 0]

    def _play_npcs(self) -> None:
        """Rounds of one batched move per NPC group over every env waiting on it, until every env
        waits on its learner."""
        turn = self.buf.turn[:, 0]
        while (turn != LEARNER).any():
            self.rounds += 1
            for g, policy in enumerate(self.npcs):
                envs = np.flatnonzero(turn == g)
                if not len(envs):
                    continue
                rows = self.buf.turn_row[envs, 0]
                obs = self.buf.npc_obs[g][envs, rows]
                mask = self.buf.npc_mask[g][envs, rows]
                actions = policy(obs, mask, self.rng)
                self.npc_actions[g][envs] = actions
                for e, r, o, m, a in zip(envs, rows, obs, mask, actions):
                    agent = self.layout.groups[g].agents[r]
                    self.npc_moves[e].append((self._episode(e), agent, o.copy(), m.copy(), int(a)))
            step_npcs(self.joints, self.npc_actions)
            self.check_masks(self.buf)

    def _episode(self, e: int) -> int:
        return len(self.envs[e].seeds) - 1

    def step(self, actions: np.ndarray) -> None:
        """One learner move per env, then the NPC rounds up to every learner's next turn."""
        for e, joint in enumerate(self.joints):
            self.steps[e].append(
                LearnerStep(self._episode(e), joint.learner, self.buf.train_obs[e].copy(),
                            self.buf.train_mask[e].copy(), int(actions[e]))
            )
        step_learners(self.joints, np.asarray(actions))
        self.check_masks(self.buf)
        self._play_npcs()
        self._record_no_move()
        buf = self.buf
        for e in range(self.num_envs):
            s = self.steps[e][-1]
            s.reward, s.npc_reward = float(buf.reward[e, 0]), float(buf.npc_reward[e, 0])
            s.terminated, s.truncated = bool(buf.terminated[e, 0]), bool(buf.truncated[e, 0])
            if s.terminated or s.truncated:
                s.final_obs = buf.final_obs[e].copy()

    def play(self, n_steps: int, learner: BatchPolicy = random_legal, seed: int | None = 0) -> None:
        self.reset(seed)
        rng = np.random.default_rng(12345)
        for _ in range(n_steps):
            self.step(learner(self.buf.train_obs, self.buf.train_mask, rng))

    def episodes(self, e: int) -> list[list[LearnerStep]]:
        """Env ``e``'s finished episodes (in which the learner moved), as lists of learner steps."""
        out, current = [], []
        for s in self.steps[e]:
            current.append(s)
            if s.terminated or s.truncated:
                out.append(current)
                current = []
        return out

    def close(self) -> None:
        for joint in self.joints:
            joint.close()
