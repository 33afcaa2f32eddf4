"""Networks, bots and env helpers the checkpoint tests save, name by import path and load.

Importable as ``tests.checkpoint_agents:<Name>`` (the form ``policy_class`` and scripted ``uri``
strings use).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from npc_wrapper.npcs.policies import NPCPolicy
from tests.envs import RecordingParallelEnv

__all__ = [
    "AtariStyleAgent",
    "NoForward",
    "CleanRLAgent",
    "CountingPolicy",
    "MLPAgent",
    "MarkerOnForward",
    "ObsRecordingEnv",
    "TinyExtractor",
    "always_one",
    "fixed_action_agent",
    "save_marker_torchscript",
]


class MLPAgent(nn.Module):
    """A small policy network: observations to action logits."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, n_actions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


def fixed_action_agent(obs_dim: int, n_actions: int, action: int) -> MLPAgent:
    """An :class:`MLPAgent` whose argmax is always ``action`` (so its NPC actions identify it)."""
    agent = MLPAgent(obs_dim, n_actions)
    with torch.no_grad():
        for p in agent.parameters():
            p.zero_()
        agent.net[2].bias[action] = 10.0
    return agent


def _layer_init(layer: nn.Linear, std: float = float(np.sqrt(2)), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class CleanRLAgent(nn.Module):
    """The agent of CleanRL's ``ppo.py``: built from ``envs``, no ``forward``, an ``actor`` head."""

    def __init__(self, envs: Any) -> None:
        super().__init__()
        obs_dim = int(np.prod(envs.single_observation_space.shape))
        n_actions = int(envs.single_action_space.n)
        self.critic = nn.Sequential(
            _layer_init(nn.Linear(obs_dim, 32)),
            nn.Tanh(),
            _layer_init(nn.Linear(32, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            _layer_init(nn.Linear(obs_dim, 32)),
            nn.Tanh(),
            _layer_init(nn.Linear(32, n_actions), std=1.0),
        )

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(
        self, x: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        logits = self.actor(x)
        probs = torch.distributions.Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


class AtariStyleAgent(nn.Module):
    """CleanRL's Atari layout: a ``network`` trunk, no ``forward``; acts via ``get_action_and_value``."""

    def __init__(self, envs: Any) -> None:
        super().__init__()
        obs_dim = int(np.prod(envs.single_observation_space.shape))
        self.network = nn.Sequential(nn.Linear(obs_dim, 16), nn.ReLU())
        self.actor = nn.Linear(16, int(envs.single_action_space.n))
        self.critic = nn.Linear(16, 1)

    def get_action_and_value(
        self, x: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        hidden = self.network(x)
        probs = torch.distributions.Categorical(logits=self.actor(hidden))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden)


class NoForward(nn.Module):
    """A module with weights but no way to act."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(16, 5)


class TinyExtractor(BaseFeaturesExtractor):
    """A user-defined SB3 features extractor: SB3 zips using it need ``trusted`` to load."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 8) -> None:
        super().__init__(observation_space, features_dim)
        self.linear = nn.Linear(int(np.prod(observation_space.shape)), features_dim)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(observations.flatten(1)))


class CountingPolicy(NPCPolicy):
    """A scripted NPC that always plays action 1 and counts its calls and rows."""

    def __init__(
        self, observation_space: spaces.Space, action_space: spaces.Space, name: str = "counting"
    ) -> None:
        super().__init__(observation_space, action_space, name)
        self.calls = 0
        self.rows_seen = 0

    def act(self, obs: np.ndarray, rows: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.rows_seen += len(rows)
        return np.ones(len(rows), dtype=np.int64)


def always_one(obs: np.ndarray) -> np.ndarray:
    """A scripted bot: action 1 for every row."""
    return np.ones(len(obs), dtype=np.int64)


class ObsRecordingEnv(RecordingParallelEnv):
    """:class:`RecordingParallelEnv` that also records, for each ``step``, the observations the
    actions were chosen from and whether it is the first step of an episode."""

    def __init__(self, env: ParallelEnv) -> None:
        super().__init__(env)
        self.obs_log: list[dict[Any, np.ndarray]] = []
        self.first_log: list[bool] = []
        self._last: dict[Any, np.ndarray] = {}
        self._first = False

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, infos = super().reset(seed=seed, options=options)
        self._last = {a: np.array(o, copy=True) for a, o in obs.items()}
        self._first = True
        return obs, infos

    def step(self, actions: dict[Any, Any]):
        self.obs_log.append(copy.deepcopy(self._last))
        self.first_log.append(self._first)
        self._first = False
        out = super().step(actions)
        self._last = {a: np.array(o, copy=True) for a, o in out[0].items()}
        return out


class MarkerOnForward(nn.Module):
    """TorchScript that writes a file when it runs, as an untrusted module could (torch.ops.aten.save)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.ops.aten.save([x], self.marker)
        return torch.zeros(x.shape[0], 5)


def save_marker_torchscript(path: Path, marker: Path) -> Path:
    """Save a :class:`MarkerOnForward` writing ``marker`` as TorchScript at ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(MarkerOnForward(str(marker))), path)
    return path
