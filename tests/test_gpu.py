"""CUDA path of the NPC adapters: the same greedy actions as on CPU, uint8 observations kept uint8.

Every test here needs CUDA and is skipped without it (``-m gpu`` selects them). Greedy
(``deterministic_npc=True``) actions are compared, because sampling draws from each device's own
generator. TF32 is switched off so both devices compute the logits in full float32, and the
networks' output layers are scaled up so the best logit wins by far more than float32 rounding:
an exact comparison then tests the data path, not the arithmetic.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

import npc_wrapper as nw
from tests.envs import RecordingParallelEnv, ScriptedParallelEnv, simple_tag

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)"),
]

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
STEPS = 40


@pytest.fixture(autouse=True)
def _full_float32() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _battle_env() -> Any:
    from magent2.environments import battle_v4

    return battle_v4.parallel_env(map_size=16, max_cycles=30)


def _graph_modes(cls: type) -> list[bool]:
    """``[False, True]`` where this version's adapter offers ``cuda_graphs``, else ``[False]``."""
    return [False, True] if "cuda_graphs" in inspect.signature(cls).parameters else [False]


class _MLP(nn.Module):
    """Vector obs -> logits, output scaled so the argmax is decided by a wide margin."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, 64), nn.Tanh(), nn.Linear(64, n_out))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return 100.0 * self.net(obs.float())


class _GridCNN(nn.Module):
    """magent2's HWC float obs -> logits (permuted to CHW here)."""

    def __init__(self, shape: tuple[int, int, int], n_out: int) -> None:
        super().__init__()
        h, w, c = shape
        self.net = nn.Sequential(nn.Conv2d(c, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * (h - 2) * (w - 2), n_out))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return 100.0 * self.net(obs.permute(0, 3, 1, 2).float())


def _rollout(env_fn: Any, npc: Any, device: torch.device, training_agents: list[str], steps: int = STEPS,
             **kwargs: Any) -> list[np.ndarray]:
    """Training-slot observations of a seeded rollout with fixed trainer actions (they depend on the NPCs' actions)."""
    venv = nw.make_vec_env(env_fn, num_envs=2, npc=npc, training_agents=training_agents, seed=3, device=device,
                           deterministic_npc=True, **kwargs)
    try:
        rng = np.random.default_rng(0)
        out = [venv.reset()]
        for _ in range(steps):
            out.append(venv.step(rng.integers(0, venv.action_space.n, size=venv.num_envs))[0])
        return out
    finally:
        venv.close()


def _same_rollouts(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    for t, (x, y) in enumerate(zip(a, b)):
        np.testing.assert_array_equal(x, y, err_msg=f"training observations differ at step {t}")


@pytest.mark.parametrize("cuda_graphs", _graph_modes(nw.TorchPolicy))
def test_torch_policy_cuda_matches_cpu_in_tag(cuda_graphs: bool) -> None:
    torch.manual_seed(0)
    module = _MLP(14, 5)
    cpu = _rollout(simple_tag, nw.TorchPolicy(module, spaces.Box(-np.inf, np.inf, (14,), np.float32),
                                            spaces.Discrete(5), device=CPU, deterministic=True), CPU, ["adversary_*"])
    extra = {"cuda_graphs": True} if cuda_graphs else {}
    gpu_policy = nw.TorchPolicy(module, spaces.Box(-np.inf, np.inf, (14,), np.float32), spaces.Discrete(5),
                                device=CUDA, deterministic=True, **extra)
    assert next(gpu_policy.module.parameters()).device.type == "cuda"
    _same_rollouts(cpu, _rollout(simple_tag, gpu_policy, CUDA, ["adversary_*"]))


@pytest.mark.parametrize("cuda_graphs", _graph_modes(nw.TorchPolicy))
def test_torch_policy_cuda_matches_cpu_in_battle(cuda_graphs: bool) -> None:
    """Many NPCs per env (batch of all blue agents of both envs) through a CNN."""
    torch.manual_seed(0)
    module = _GridCNN((13, 13, 5), 21)
    cpu = _rollout(_battle_env, module, CPU, ["red_*"])
    if cuda_graphs:
        npc = nw.TorchPolicy(module, spaces.Box(0.0, 2.0, (13, 13, 5), np.float32), spaces.Discrete(21),
                             device=CUDA, deterministic=True, cuda_graphs=True)
    else:
        npc = module  # a bare module: the wrapper wraps it in TorchPolicy on the device
    _same_rollouts(cpu, _rollout(_battle_env, npc, CUDA, ["red_*"]))


@pytest.mark.parametrize("cuda_graphs", _graph_modes(nw.SB3Policy))
def test_sb3_policy_cuda_matches_cpu(cuda_graphs: bool) -> None:
    from stable_baselines3 import PPO

    obs_space, act_space = spaces.Box(-np.inf, np.inf, (14,), np.float32), spaces.Discrete(5)
    cpu_model = PPO("MlpPolicy", _SpacesEnv(obs_space, act_space), n_steps=64, batch_size=64, seed=0, device=CPU)
    with torch.no_grad():
        cpu_model.policy.action_net.weight.mul_(1e4)  # PPO's 0.01-gain init leaves near-ties; widen the margins
    gpu_model = PPO("MlpPolicy", _SpacesEnv(obs_space, act_space), n_steps=64, batch_size=64, seed=0, device=CUDA)
    gpu_model.policy.load_state_dict(cpu_model.policy.state_dict())

    cpu = _rollout(simple_tag, cpu_model, CPU, ["adversary_*"])
    gpu_npc = gpu_model
    if cuda_graphs:
        gpu_npc = nw.SB3Policy(gpu_model, obs_space, act_space, device=CUDA, deterministic=True,
                               cuda_graphs=True)
    gpu = _rollout(simple_tag, gpu_npc, CUDA, ["adversary_*"])
    assert next(gpu_model.policy.parameters()).device.type == "cuda"
    _same_rollouts(cpu, gpu)

    # The adapter on its own, on one batch of real observations.
    env = simple_tag()
    obs, _ = env.reset(seed=0)
    batch = np.stack([obs["agent_0"]] * 8) + np.linspace(-1, 1, 8, dtype=np.float32)[:, None]
    acts = []
    for model, device in ((cpu_model, CPU), (gpu_model, CUDA)):
        extra = {"cuda_graphs": True} if cuda_graphs and device == CUDA else {}
        policy = nw.SB3Policy(model, obs_space, act_space, device=device, deterministic=True, **extra)
        policy.reset(8, seed=0)
        acts.append(np.asarray(policy.act(batch, np.arange(8), np.ones(8, dtype=bool))))
    np.testing.assert_array_equal(acts[0], acts[1])


class _Recorder(nn.Module):
    """Records the dtype and device of every batch it gets; the greedy action is ``obs[..., 0, 0, 0] % 4``."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device
        self.seen: list[tuple[torch.dtype, str]] = []

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        self.seen.append((obs.dtype, obs.device.type))
        value = obs[:, 0, 0, 0].long() % 4
        one_hot = (value[:, None] == torch.arange(4, device=obs.device)).float()  # no host sync: capturable
        return 10.0 * one_hot + self.anchor


@pytest.mark.parametrize("cuda_graphs", _graph_modes(nw.TorchPolicy))
def test_uint8_observations_reach_the_module_as_uint8_on_the_device(cuda_graphs: bool) -> None:
    obs_space = spaces.Box(0, 255, (8, 8, 3), np.uint8)
    agents = ["a_0", "b_0", "b_1"]

    def env_fn() -> RecordingParallelEnv:
        # b_1 dies at step 2, so the NPC batch shrinks from 4 rows to 2 mid-episode.
        return RecordingParallelEnv(ScriptedParallelEnv(agents=agents, obs_shape=(8, 8, 3), obs_dtype=np.uint8,
                                                        action_space=spaces.Discrete(4), max_steps=5,
                                                        death_steps={"b_1": 2}))

    extra = {"cuda_graphs": True} if cuda_graphs else {}
    npc = nw.TorchPolicy(_Recorder(), obs_space, spaces.Discrete(4), device=CUDA, deterministic=True, **extra)
    module = npc.module  # the adapter runs its own frozen copy of the module it was given
    venv = nw.make_vec_env(env_fn, num_envs=2, npc=npc, training_agents=["a_*"], seed=10, device=CUDA)
    try:
        venv.reset()
        for _ in range(4):  # stay inside the first (seeded) episode: it truncates at step 5
            venv.step(np.zeros(venv.num_envs, dtype=np.int64))
        # Every call, the construction-time dry run and CUDA-graph captures included (replays call no Python).
        assert module.seen, "the NPC module was never called"
        assert set(module.seen) == {(torch.uint8, "cuda")}
        # The NPCs' actions are computed from the uint8 values they saw: obs value % 4, where the
        # scripted env's obs value of agent i at step t of episode `seed` is (7 t + 31 i + seed) % 256.
        for e, log in enumerate(venv.get_attr("action_log", indices=[0, 1])):
            for t, actions in enumerate(log):
                for agent in ("b_0", "b_1"):
                    if agent in actions:
                        i = agents.index(agent)
                        assert int(actions[agent]) == (7 * t + 31 * i + 10 + e) % 256 % 4, (e, t, agent)
            assert "b_1" not in log[2] and "b_1" in log[1]  # dead agents get no action
    finally:
        venv.close()


class _SpacesEnv(gym.Env):
    """The smallest Gymnasium env with given spaces: what SB3 needs to build an untrained PPO."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: Any):
        return self.observation_space.sample(), 0.0, False, False, {}


class _Uniform(nn.Module):
    """Equal logits over 4 actions for every row: sampled actions are uniform."""

    def __init__(self) -> None:
        super().__init__()
        self.zero = nn.Parameter(torch.zeros(4))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs[:, :1].float() * 0.0 + self.zero


@pytest.mark.parametrize("cuda_graphs", _graph_modes(nw.TorchPolicy))
def test_sampling_on_the_device_draws_fresh_seeded_numbers_every_step(cuda_graphs: bool) -> None:
    """A replayed graph must not replay its random numbers: its generator is registered with it."""
    extra = {"cuda_graphs": True} if cuda_graphs else {}
    npc = nw.TorchPolicy(_Uniform(), spaces.Box(-1.0, 1.0, (3,), np.float32), spaces.Discrete(4), device=CUDA,
                         **extra)
    obs = np.zeros((50, 3), np.float32)  # bucket 64: padded rows must not matter either

    def draws() -> np.ndarray:
        npc.reset(50, seed=7)
        return np.stack([npc.act(obs, np.arange(50), np.zeros(50, bool)).copy() for _ in range(40)])

    first = draws()
    assert len({a.tobytes() for a in first}) == len(first), "some steps drew the same actions for all 50 rows"
    np.testing.assert_allclose(np.bincount(first.ravel(), minlength=4) / first.size, 0.25, atol=0.03)
    np.testing.assert_array_equal(draws(), first)  # reproducible from the seed
