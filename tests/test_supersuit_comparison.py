"""What SuperSuit's PettingZoo-to-SB3 vector env gets wrong, and that ``make_vec_env`` gets right.

Each SuperSuit assertion records the behaviour observed with supersuit 3.11 on the same
:class:`~tests.envs.ScriptedParallelEnv` as the npc_wrapper assertion next to it. If a SuperSuit
release fixes one of these, its test fails here and the comparison should be updated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import supersuit as ss
from stable_baselines3 import PPO

import npc_wrapper as nw
from tests.envs import RecordingParallelEnv, ScriptedParallelEnv


def supersuit_vec_env(env: Any, num_envs: int = 2) -> Any:
    """SuperSuit's documented recipe for SB3: one vec-env slot per agent, ``num_envs`` copies."""
    return ss.concat_vec_envs_v1(ss.pettingzoo_env_to_vec_env_v1(env), num_envs, num_cpus=0,
                                 base_class="stable_baselines3")


def ours(num_envs: int = 2, **env_kwargs: Any) -> nw.NPCVecEnv:
    return nw.make_vec_env(lambda: RecordingParallelEnv(ScriptedParallelEnv(**env_kwargs)), num_envs=num_envs,
                           training_agents_pct=1.0)


def test_seeding() -> None:
    theirs = supersuit_vec_env(ScriptedParallelEnv())
    with pytest.raises(AttributeError, match="'ConcatVecEnv' object has no attribute 'seed'"):
        theirs.seed(0)
    with pytest.raises(AttributeError, match="has no attribute 'seed'"):
        PPO("MlpPolicy", theirs, seed=0, device="cpu")  # SB3 seeds the env in its constructor

    venv = ours(obs_shape=(4,))
    assert venv.seed(0) == [0, 0, 0, 1, 1, 1]
    obs = venv.reset()
    np.testing.assert_array_equal(obs[:, 3], [0, 0, 0, 1, 1, 1])  # the episode id is the reset seed
    assert venv.get_attr("reset_seeds", indices=[0, 3]) == [[0], [1]]
    model = PPO("MlpPolicy", venv, seed=3, n_steps=4, batch_size=24, device="cpu")
    model.learn(8)  # PPO seeds the env (sub-env i gets 3 + i) and resets it
    assert [s[:2] for s in venv.get_attr("reset_seeds", indices=[0, 3])] == [[0, 3], [1, 4]]
    venv.close()


def test_truncation_flag() -> None:
    theirs = supersuit_vec_env(ScriptedParallelEnv(max_steps=2))
    theirs.reset()
    theirs.step(np.zeros(6, dtype=np.int64))
    _, _, done, infos = theirs.step(np.zeros(6, dtype=np.int64))
    assert done.all() and all("terminal_observation" in i for i in infos)
    # A time-limit end looks like a real termination: SB3 will not bootstrap from it.
    assert not any("TimeLimit.truncated" in i for i in infos)

    venv = ours(max_steps=2)
    venv.reset()
    venv.step(np.zeros(6, dtype=np.int64))
    _, _, done, infos = venv.step(np.zeros(6, dtype=np.int64))
    assert done.all() and all(i["TimeLimit.truncated"] is True for i in infos)
    venv.close()


def test_agent_death() -> None:
    # Without black death SuperSuit refuses envs whose agents die ...
    theirs = supersuit_vec_env(ScriptedParallelEnv(death_steps={"a_0": 2}), num_envs=1)
    theirs.reset()
    theirs.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(AssertionError, match="varying numbers of active agents"):
        theirs.step(np.zeros(3, dtype=np.int64))

    # ... and with black_death_v3 the dying agent never gets done=True: its episode never ends.
    theirs = supersuit_vec_env(ss.black_death_v3(ScriptedParallelEnv(death_steps={"a_0": 2}, max_steps=50)), 1)
    theirs.reset()
    dones = []
    for _ in range(6):
        obs, rew, done, infos = theirs.step(np.zeros(3, dtype=np.int64))
        dones.append(done.tolist())
    assert dones == [[False] * 3] * 6
    assert not any("terminal_observation" in i for i in infos)
    np.testing.assert_array_equal(obs[0], [0, 0, 0])  # zeros, with nothing marking them as padding
    assert infos[0] == {}

    venv = ours(num_envs=1, death_steps={"a_0": 2}, max_steps=50)
    venv.reset()
    venv.step(np.zeros(3, dtype=np.int64))
    obs, rew, done, infos = venv.step(np.zeros(3, dtype=np.int64))
    assert done.tolist() == [True, False, False]
    np.testing.assert_array_equal(infos[0]["terminal_observation"], [2, 0, 0])
    assert infos[0]["episode"]["l"] == 2 and rew[0] == 2
    obs, rew, done, infos = venv.step(np.zeros(3, dtype=np.int64))
    assert infos[0][nw.PADDING_KEY] is True and not done.any()
    venv.close()


@pytest.mark.parametrize("end", [{"max_steps": 3}, {"terminate_all_at": 3}], ids=["truncation", "termination"])
def test_episode_end_with_black_death(end: dict[str, int]) -> None:
    # black_death_v3 ends the env only when every agent is terminated AND truncated, so a plain
    # time limit or a plain termination is never reported: SuperSuit steps the finished env.
    theirs = supersuit_vec_env(ss.black_death_v3(ScriptedParallelEnv(**end)), 1)
    theirs.reset()
    for _ in range(3):
        _, _, done, _ = theirs.step(np.zeros(3, dtype=np.int64))
    assert not done.any()
    with pytest.raises(RuntimeError, match="no live agents"):
        theirs.step(np.zeros(3, dtype=np.int64))

    venv = ours(num_envs=1, **end)
    venv.reset()
    for _ in range(3):
        obs, _, done, infos = venv.step(np.zeros(3, dtype=np.int64))
    assert done.all()
    assert all(i["TimeLimit.truncated"] is ("max_steps" in end) for i in infos)
    np.testing.assert_array_equal(obs[:, 0], [0, 0, 0])  # auto-reset: the next episode's first obs
    venv.step(np.zeros(3, dtype=np.int64))
    venv.close()
