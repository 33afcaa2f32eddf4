"""Real Stable-Baselines3 training through the wrapper."""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecTransposeImage

import npc_wrapper as nw
from tests.envs import RecordingParallelEnv, simple_tag


def test_ppo_learns_simple_tag_predators_against_a_random_prey() -> None:
    venv = nw.make_vec_env(simple_tag, num_envs=4, npc="random", training_agents_pct=0.75, seed=0)
    model = PPO("MlpPolicy", venv, n_steps=128, batch_size=256, n_epochs=2, seed=0, device="cpu",
                policy_kwargs={"net_arch": [32, 32]})
    model.learn(3072)
    assert model.num_timesteps >= 3072
    # Monitor-style episode info from the wrapper itself (no VecMonitor): 12 slots x 25-step episodes.
    assert len(model.ep_info_buffer) == 100
    assert {ep["l"] for ep in model.ep_info_buffer} == {25}
    rewards = [ep["r"] for ep in model.ep_info_buffer]
    assert all(r >= 0 for r in rewards) and any(r > 0 for r in rewards)  # predators earn +10 per tag
    venv.close()


def pistonball(size: int = 36) -> Any:
    import supersuit as ss
    from pettingzoo.butterfly import pistonball_v6

    env = pistonball_v6.parallel_env(n_pistons=4, max_cycles=16)
    env = ss.resize_v1(ss.color_reduction_v0(env, mode="B"), size, size)
    return ss.reshape_v0(env, (size, size, 1))


def test_cnn_policy_on_image_observations_and_the_trained_model_as_npc() -> None:
    venv = nw.make_vec_env(pistonball, num_envs=2, npc="random", training_agents_pct=0.5, seed=0)
    assert venv.observation_space.shape == (36, 36, 1) and venv.observation_space.dtype == np.uint8
    model = PPO("CnnPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"features_extractor_kwargs": {"features_dim": 32}})
    assert isinstance(model.get_env(), VecTransposeImage)  # SB3 trains channel-first
    model.learn(256)
    assert len(model.ep_info_buffer) > 0 and all(1 <= ep["l"] <= 16 for ep in model.ep_info_buffer)
    venv.close()

    # The trained CNN now drives the NPC pistons of HWC envs; its actions are model.predict's.
    against = nw.make_vec_env(lambda: RecordingParallelEnv(pistonball()), num_envs=2, npc=model,
                              deterministic_npc=True, training_agents_pct=0.5, device="cpu", seed=3)
    against.reset()
    for _ in range(6):
        against.step(np.zeros((4, 1), dtype=np.float32))
    log = against.get_attr("action_log", indices=[0])[0]
    replay = pistonball()
    obs, _ = replay.reset(seed=3)
    for actions in log:
        expected, _ = model.predict(np.stack([obs["piston_2"], obs["piston_3"]]), deterministic=True)
        np.testing.assert_allclose(np.stack([actions["piston_2"], actions["piston_3"]]), expected, rtol=1e-5,
                                   atol=1e-6)
        obs, *_ = replay.step(actions)
    against.close()
