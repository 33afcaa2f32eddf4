"""NPC policy adapters on their own: output decoding, seeding, TorchScript, the device runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

import npc_wrapper as nw
from npc_wrapper.npcs.device import DeviceRunner, resolve_device
from npc_wrapper.npcs.policies import _checked_actions

OBS = spaces.Box(-1.0, 1.0, (3,), np.float32)


def _act(policy: nw.NPCPolicy, obs: np.ndarray) -> np.ndarray:
    return policy.act(obs, np.arange(len(obs)), np.zeros(len(obs), dtype=bool))


def _decoded(policy: nw.TorchPolicy, out: torch.Tensor) -> np.ndarray:
    """The actions ``policy`` reads from the module output ``out`` (NaN rows refused)."""
    return _checked_actions(policy._to_actions(out).numpy(), policy.action_space, policy)


def test_torchscript_module_is_accepted_directly_and_frozen() -> None:
    module = torch.jit.script(torch.nn.Linear(3, 4))
    policy = nw.TorchPolicy(module, OBS, spaces.Discrete(4), device="cpu", deterministic=True)
    obs = np.random.default_rng(0).uniform(-1, 1, (5, 3)).astype(np.float32)
    expected = module(torch.from_numpy(obs)).argmax(dim=1).numpy()
    np.testing.assert_array_equal(_act(policy, obs), expected)
    assert not any(p.requires_grad for p in policy.module.parameters())


@pytest.mark.parametrize(
    ("space", "out", "expected"),
    [
        (spaces.Discrete(3, start=1), torch.tensor([[0.0, 5.0, 0.0]]), [2]),
        (spaces.Discrete(3), torch.tensor([2]), [2]),
        (spaces.MultiDiscrete([2, 3]), torch.tensor([[0.0, 1.0, 9.0, 0.0, 0.0]]), [[1, 0]]),
        (spaces.MultiBinary(2), torch.tensor([[3.0, -3.0]]), [[1, 0]]),
        (spaces.Box(-1.0, 1.0, (2,)), torch.tensor([[5.0, -0.5]]), [[1.0, -0.5]]),
    ],
)
def test_torch_outputs_decode_per_action_space(space: spaces.Space, out: torch.Tensor, expected: list) -> None:
    policy = nw.TorchPolicy(torch.nn.Identity(), OBS, space, device="cpu", deterministic=True)
    policy.reset(1, seed=0)
    decoded = _decoded(policy, out)
    np.testing.assert_allclose(decoded, np.asarray(expected))
    assert all(space.contains(np.asarray(a, dtype=space.dtype) if a.ndim else int(a)) for a in decoded)


@pytest.mark.parametrize(
    ("space", "out", "expected"),
    [
        (spaces.Discrete(5), torch.tensor([[3.7], [0.2]]), r"shape \(2, 1\) and dtype torch.float32.*\(B, 5"),
        (spaces.Discrete(5), torch.tensor([3.7, 0.2]), r"shape \(2,\) and dtype torch.float32"),
        (spaces.Discrete(5), torch.tensor([[1, 2], [3, 4]]), r"shape \(2, 2\) and dtype torch.int64"),
        (spaces.MultiDiscrete([2, 3]), torch.zeros(2, 2), r"shape \(2, 2\).*float logits \(B, 5\)"),
        (spaces.MultiDiscrete([2, 3]), torch.zeros(2, 5, dtype=torch.int64), r"integer actions \(B, 2\)"),
        (spaces.MultiBinary(3), torch.zeros(2, 1), r"shape \(2, 1\) and dtype torch.float32.*\(B, 3\)"),
        (spaces.Box(-1.0, 1.0, (2,)), torch.zeros(2, 4), r"shape \(2, 4\).*actions \(B, 2\)"),
        (spaces.Box(-1.0, 1.0, (2,)), torch.zeros(()), r"shape \(\).*actions \(B, 2\)"),
    ],
    ids=["discrete-1-float", "discrete-flat-float", "discrete-int-2", "md-float", "md-int", "mb-float",
         "box-4", "box-scalar"],
)
def test_torch_outputs_of_the_wrong_shape_are_an_error(
    space: spaces.Space, out: torch.Tensor, expected: str
) -> None:
    # Truncating (B, 1) floats to integer actions would give a valid-looking but meaningless NPC.
    policy = nw.TorchPolicy(torch.nn.Identity(), OBS, space, device="cpu")
    policy.reset(2, seed=0)
    with pytest.raises(ValueError, match=expected):
        policy._to_actions(out)


def test_integer_column_is_accepted_as_discrete_actions() -> None:
    policy = nw.TorchPolicy(torch.nn.Identity(), OBS, spaces.Discrete(5), device="cpu")
    np.testing.assert_array_equal(_decoded(policy, torch.tensor([[3], [0]])), [3, 0])


def test_sampling_follows_the_policy_seed() -> None:
    logits = torch.nn.Linear(3, 6)
    policy = nw.TorchPolicy(logits, OBS, spaces.Discrete(6), device="cpu")
    obs = np.zeros((64, 3), np.float32)
    policy.reset(64, seed=1)
    first = _act(policy, obs)
    policy.reset(64, seed=1)
    np.testing.assert_array_equal(_act(policy, obs), first)
    policy.reset(64, seed=2)
    assert not np.array_equal(_act(policy, obs), first)


def test_random_policy_is_vectorised_and_seeded() -> None:
    space = spaces.MultiDiscrete([3, 4])
    policy = nw.RandomPolicy(OBS, space)
    policy.reset(1000, seed=0)
    a = _act(policy, np.zeros((1000, 3), np.float32))
    assert a.shape == (1000, 2) and all(space.contains(x) for x in a)
    assert set(a[:, 1]) == {0, 1, 2, 3}


def test_act_async_defaults_to_act() -> None:
    policy = nw.CallablePolicy(lambda obs: np.full(len(obs), 2), OBS, spaces.Discrete(4))
    wait = policy.act_async(np.zeros((3, 3), np.float32), np.arange(3), np.zeros(3, bool))
    np.testing.assert_array_equal(wait(), [2, 2, 2])


def test_device_runner_cpu_keeps_uint8_until_the_model() -> None:
    seen: list[torch.dtype] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.dtype)
        return x.float().sum(dim=(1, 2))

    runner = DeviceRunner(torch.device("cpu"))
    out = runner.run(forward, np.ones((2, 4, 4), np.uint8))()
    assert seen == [torch.uint8]
    np.testing.assert_array_equal(out, [16.0, 16.0])


def test_cuda_graphs_need_cuda() -> None:
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        DeviceRunner(torch.device("cpu"), cuda_graphs=True)


def test_cuda_device_without_cuda_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """device="cuda" on a machine without CUDA (the README's load_npc example) said, from deep in torch,
    to call torch.load with map_location."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    obs, act = spaces.Box(-1.0, 1.0, (4,)), spaces.Discrete(3)
    for device in ("cuda", "cuda:1", torch.device("cuda")):
        with pytest.raises(ValueError, match="but CUDA is not available"):
            nw.TorchPolicy(torch.nn.Linear(4, 3), obs, act, device=device)
    with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
        nw.load_npc(str(Path(nw.__file__).parent / "data" / "simple_tag_npc.zip"),
                    spaces.Box(-np.inf, np.inf, (16,), np.float32), spaces.Discrete(5), device="cuda")
    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type == "cpu"


def test_auto_device_resolves_to_cuda_only_when_available() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def _sb3_model(action_space: spaces.Space, **kwargs: object) -> tuple[object, spaces.Space]:
    from stable_baselines3 import PPO

    from tests.envs import ScriptedParallelEnv

    def make() -> ScriptedParallelEnv:
        return ScriptedParallelEnv(action_space=action_space, obs_shape=(4,), validate_actions=False)

    model = PPO("MlpPolicy", nw.make_vec_env(make, num_envs=1, training_agents_pct=1.0), seed=0, device="cpu",
                **kwargs)
    return model, make().observation_space("a_0")


@pytest.mark.parametrize(
    "action_space",
    [spaces.Discrete(4), spaces.MultiDiscrete([2, 3]), spaces.Box(-1.0, 1.0, (2,), np.float32), spaces.MultiBinary(3)],
    ids=["discrete", "multidiscrete", "box", "multibinary"],
)
def test_sb3_policy_greedy_actions_equal_predict(action_space: spaces.Space) -> None:
    model, obs_space = _sb3_model(action_space)
    npc = nw.SB3Policy(model, obs_space, action_space, device="cpu", deterministic=True)
    npc.reset(16, seed=0)
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    expected, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(npc.act(obs, np.arange(16), np.zeros(16, bool)), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "action_space",
    [spaces.Discrete(4), spaces.MultiDiscrete([2, 3]), spaces.Box(-100.0, 100.0, (2,), np.float32),
     spaces.MultiBinary(3)],
    ids=["discrete", "multidiscrete", "box", "multibinary"],
)
def test_sb3_policy_samples_follow_the_policy_distribution(action_space: spaces.Space) -> None:
    """Sampling from the network's output (outside any CUDA graph) matches SB3's own distribution."""
    model, obs_space = _sb3_model(action_space)
    policy = model.policy
    with torch.no_grad():
        policy.action_net.weight.mul_(100.0)  # PPO's 0.01-gain init makes every distribution near-uniform
        if isinstance(action_space, spaces.Box):
            policy.log_std.copy_(torch.tensor([-1.0, 0.5]))  # not the initial std of 1
    rows = 20_000
    obs = np.tile(np.array([[0.5, -1.0, 0.25, 2.0]], np.float32), (rows, 1))
    npc = nw.SB3Policy(model, obs_space, action_space, device="cpu")
    npc.reset(rows, seed=1)
    acts = npc.act(obs, np.arange(rows), np.zeros(rows, bool))
    assert acts.shape == (rows, *action_space.shape)
    with torch.no_grad():
        dist = policy.get_distribution(torch.as_tensor(obs[:1])).distribution
    if isinstance(action_space, spaces.Discrete):
        np.testing.assert_allclose(np.bincount(acts, minlength=4) / rows, dist.probs[0].numpy(), atol=0.015)
    elif isinstance(action_space, spaces.MultiDiscrete):
        for k, (part, n) in enumerate(zip(dist, action_space.nvec)):
            freq = np.bincount(acts[:, k], minlength=n) / rows
            np.testing.assert_allclose(freq, part.probs[0].numpy(), atol=0.015)
    elif isinstance(action_space, spaces.MultiBinary):
        np.testing.assert_allclose(acts.mean(axis=0), dist.probs[0].numpy(), atol=0.015)
    else:
        np.testing.assert_allclose(acts.mean(axis=0), dist.mean[0].numpy(), atol=0.05)
        np.testing.assert_allclose(acts.std(axis=0), dist.stddev[0].numpy(), rtol=0.05)
    npc.reset(rows, seed=1)
    np.testing.assert_array_equal(npc.act(obs, np.arange(rows), np.zeros(rows, bool)), acts)  # seeded


def test_sb3_gsde_policy_samples_through_its_distribution_and_refuses_cuda_graphs() -> None:
    space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    model, obs_space = _sb3_model(space, use_sde=True)
    npc = nw.SB3Policy(model, obs_space, space, device="cpu")
    acts = _act(npc, np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    assert acts.shape == (8, 2) and space.contains(acts[0].astype(np.float32))
    with pytest.raises(ValueError, match="StateDependentNoiseDistribution.*cannot be captured"):
        nw.SB3Policy(model, obs_space, space, device="cpu", cuda_graphs=True)


def test_sb3_squashed_box_actions_stay_inside_the_bounds() -> None:
    """SB3 unscales a saturated tanh action one float32 step past the bound (here 0.70000005 for 0.7);
    the env and the engine's per-step check refuse that, so the NPC clips to the bounds."""
    from stable_baselines3 import SAC

    from tests.envs import ScriptedParallelEnv

    box = spaces.Box(np.float32(-3.3), np.float32(0.7), (2,), np.float32)
    make = lambda: ScriptedParallelEnv(action_space=box)  # noqa: E731
    model = SAC("MlpPolicy", nw.make_vec_env(make, training_agents_pct=0.67), seed=0, device="cpu")
    with torch.no_grad():
        for p in model.policy.actor.mu.parameters():
            p.mul_(500)  # saturate the tanh
    venv = nw.make_vec_env(make, num_envs=4, training_agents_pct=0.67, npc=model, device="cpu", seed=0)
    venv.reset()
    for _ in range(5):  # the engine checks every NPC action against the space
        venv.step(np.zeros((8, 2), dtype=np.float32))
    actions = venv.engine._npc_actions[0]
    assert (actions >= box.low).all() and (actions <= box.high).all() and (actions == box.high).any()
    venv.close()
