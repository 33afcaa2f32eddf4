"""Tests for the test environments in tests/envs.py (not for npc_wrapper itself)."""

from __future__ import annotations

import pickle
import warnings

import cloudpickle
import numpy as np
import pytest
from gymnasium import spaces
from pettingzoo.test import parallel_api_test, parallel_seed_test

from tests.envs import RecordingParallelEnv, ScriptedParallelEnv, default_reward

API_CONFIGS = {
    "default": {},
    "int_ids": {"agents": [0, 1, 2, 3]},
    "deaths": {"death_steps": {"a_0": 2, "b_0": 5}, "max_steps": 7},
    "terminate_all": {"terminate_all_at": 4},
    "uint8_image": {"obs_shape": (8, 8, 3), "obs_dtype": np.uint8},
    "float64_long_obs": {"obs_shape": (6,), "obs_dtype": np.float64},
    "box_actions": {"action_space": spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)},
    "mixed_spaces": {
        "agents": ["red", "blue"],
        "per_agent_spaces": {
            "blue": (
                spaces.Dict({"img": spaces.Box(0, 255, (4, 4, 1), np.uint8), "vec": spaces.Box(-1, 1, (5,))}),
                spaces.MultiDiscrete([3, 2]),
            )
        },
    },
    "single_agent_dies_at_max": {"agents": ["solo"], "death_steps": {"solo": 3}, "max_steps": 3},
}


@pytest.mark.parametrize("kwargs", list(API_CONFIGS.values()), ids=list(API_CONFIGS))
def test_parallel_api(kwargs):
    env = ScriptedParallelEnv(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the api test reports contract slips as warnings
        parallel_api_test(env, num_cycles=50)


@pytest.mark.parametrize("kwargs", [{}, API_CONFIGS["uint8_image"], API_CONFIGS["mixed_spaces"]])
def test_parallel_seed(kwargs):
    parallel_seed_test(lambda: ScriptedParallelEnv(**kwargs), num_cycles=20)


def test_recording_wrapper_passes_api_test():
    env = RecordingParallelEnv(ScriptedParallelEnv(death_steps={"a_1": 3}))
    parallel_api_test(env, num_cycles=50)
    assert env.reset_seeds[0] == 0  # parallel_api_test starts with reset(seed=0, ...)
    assert env.reset_options[0] == {"options": 1}
    assert len(env.action_log) > 0


def test_observation_layout_and_rewards():
    env = ScriptedParallelEnv(obs_shape=(5,))
    obs, infos = env.reset(seed=42)
    assert env.agents == ["a_0", "a_1", "b_0"]
    np.testing.assert_array_equal(obs["a_1"], np.array([0, 1, -1, 42, 42], dtype=np.float32))
    assert obs["a_1"].dtype == np.float32
    assert infos["b_0"] == {"step": 0, "agent": "b_0", "episode_id": 42}

    obs, rew, term, trunc, infos = env.step({"a_0": 3, "a_1": np.int64(1), "b_0": np.array(2)})
    np.testing.assert_array_equal(obs["a_0"], [1, 0, 3, 42, 42])
    np.testing.assert_array_equal(obs["a_1"], [1, 1, 1, 42, 42])
    np.testing.assert_array_equal(obs["b_0"], [1, 2, 2, 42, 42])
    assert rew == pytest.approx({"a_0": 1.003, "a_1": 1.011, "b_0": 1.022})
    assert all(isinstance(r, float) for r in rew.values())
    assert term == {"a_0": False, "a_1": False, "b_0": False}
    assert trunc == {"a_0": False, "a_1": False, "b_0": False}
    assert infos["a_1"] == {"step": 1, "agent": "a_1", "episode_id": 42}

    # Default 3-element obs: no room for the episode id.
    env3 = ScriptedParallelEnv()
    obs, _ = env3.reset(seed=7)
    np.testing.assert_array_equal(obs["b_0"], [0, 2, -1])
    assert env3.episode_id == 7


def test_default_reward_function():
    assert default_reward("x", 2, 5, 3) == pytest.approx(5.023)
    assert default_reward("x", 0, 1, np.float32(0.5)) == 1.0  # non-integer actions add nothing
    assert default_reward("x", 0, 1, np.array([2])) == 1.0  # neither do non-scalar arrays
    assert default_reward("x", 1, 1, True) == pytest.approx(1.01)


def test_custom_reward_fn():
    env = ScriptedParallelEnv(agents=["p", "q"], reward_fn=lambda agent, i, t, a: -10.0 * i + t)
    env.reset(seed=0)
    _, rew, *_ = env.step({"p": 0, "q": 0})
    assert rew == {"p": 1.0, "q": -9.0}


def test_uint8_observations():
    env = ScriptedParallelEnv(agents=[0, 1], obs_shape=(8, 8, 3), obs_dtype=np.uint8)
    assert env.observation_space(0) == spaces.Box(0, 255, (8, 8, 3), np.uint8)
    obs, _ = env.reset(seed=250)
    assert obs[1].dtype == np.uint8 and obs[1].shape == (8, 8, 3)
    assert np.all(obs[0] == 250)
    assert np.all(obs[1] == (31 + 250) % 256)
    obs, *_ = env.step({0: 0, 1: 0})
    assert np.all(obs[1] == (7 + 31 + 250) % 256)
    assert obs[1].flags.writeable


def test_truncation_at_max_steps():
    env = ScriptedParallelEnv(max_steps=3)
    env.reset(seed=0)
    for _ in range(2):
        _, _, term, trunc, _ = env.step(dict.fromkeys(env.agents, 0))
        assert not any(trunc.values()) and not any(term.values())
    _, _, term, trunc, infos = env.step(dict.fromkeys(env.agents, 0))
    assert trunc == dict.fromkeys(["a_0", "a_1", "b_0"], True)
    assert term == dict.fromkeys(["a_0", "a_1", "b_0"], False)
    assert infos["a_0"]["step"] == 3
    assert env.agents == []
    with pytest.raises(RuntimeError, match="no live agents"):
        env.step({})


def test_deaths_and_terminate_all():
    env = ScriptedParallelEnv(death_steps={"a_1": 2}, terminate_all_at=4)
    env.reset(seed=1)
    env.step({"a_0": 0, "a_1": 0, "b_0": 0})
    obs, rew, term, trunc, _ = env.step({"a_0": 0, "a_1": 0, "b_0": 0})
    assert set(obs) == set(rew) == set(term) == set(trunc) == {"a_0", "a_1", "b_0"}
    assert term == {"a_0": False, "a_1": True, "b_0": False}
    assert env.agents == ["a_0", "b_0"]

    # Dead, unknown and missing agents are all rejected, and a rejected step changes nothing.
    with pytest.raises(ValueError, match="not alive"):
        env.step({"a_0": 0, "a_1": 0, "b_0": 0})
    with pytest.raises(ValueError, match="not alive"):
        env.step({"a_0": 0, "b_0": 0, "zzz": 0})
    with pytest.raises(ValueError, match="no action"):
        env.step({"a_0": 0})
    assert env.num_steps == 2

    obs, _, term, _, _ = env.step({"a_0": 1, "b_0": 1})
    assert set(obs) == {"a_0", "b_0"} and not any(term.values())
    _, _, term, trunc, _ = env.step({"a_0": 1, "b_0": 1})
    assert term == {"a_0": True, "b_0": True} and trunc == {"a_0": False, "b_0": False}
    assert env.agents == []

    # A reset revives everyone.
    env.reset()
    assert env.agents == env.possible_agents


def test_action_validation():
    box_obs, box_act = spaces.Box(-1.5, 1.5, (3,)), spaces.Box(-1, 1, (2,))
    env = ScriptedParallelEnv(agents=["d", "c"], per_agent_spaces={"c": (box_obs, box_act)})
    env.reset(seed=0)
    bad_actions = [
        {"d": 4, "c": np.zeros(2)},  # out of range
        {"d": np.array([1]), "c": np.zeros(2)},  # shape (1,) for Discrete
        {"d": 1.0, "c": np.zeros(2)},  # float for Discrete
        {"d": 1, "c": np.zeros(3)},  # wrong Box shape
        {"d": 1, "c": np.array([2.0, 0.0])},  # out of Box bounds
    ]
    for actions in bad_actions:
        with pytest.raises(ValueError, match="invalid action"):
            env.step(actions)
    # float64 for a float32 Box is accepted, and obs[2] shows its first element
    obs, *_ = env.step({"d": np.int32(1), "c": np.array([0.5, -0.25])})
    np.testing.assert_array_equal(obs["c"], [1.0, 1.0, 0.5])  # [t, agent index, first action element]
    assert obs["d"][2] == 1
    assert env.observation_space("c").contains(obs["c"])

    lax = ScriptedParallelEnv(validate_actions=False)
    lax.reset(seed=0)
    lax.step({"a_0": 99, "a_1": np.array([1]), "b_0": 0})  # no error


def test_step_before_reset_raises():
    with pytest.raises(RuntimeError, match="before reset"):
        ScriptedParallelEnv().step({"a_0": 0, "a_1": 0, "b_0": 0})


def test_spaces_are_stable_and_per_agent():
    shared = spaces.Discrete(5)
    env = ScriptedParallelEnv(action_space=shared)
    for a in env.possible_agents:
        assert env.action_space(a) is env.action_space(a)
        assert env.observation_space(a) is env.observation_space(a)
        assert env.action_space(a) == shared
    assert env.action_space("a_0") is not env.action_space("a_1")
    assert env.observation_spaces["b_0"] is env.observation_space("b_0")


def test_seeding_and_episode_ids():
    def ep_ids(env, seeds):
        out = []
        for s in seeds:
            obs, _ = env.reset(seed=s)
            out.append((env.episode_id, float(obs["a_0"][3])))
        return out

    seeds = [3, None, None, 11, None]
    a = ep_ids(ScriptedParallelEnv(obs_shape=(4,)), seeds)
    b = ep_ids(ScriptedParallelEnv(obs_shape=(4,)), seeds)
    assert a == b
    assert a[0] == (3, 3.0) and a[3] == (11, 11.0)
    assert len({eid for eid, _ in a}) == len(a)
    assert all(eid == obs_val for eid, obs_val in a)  # ids < 2**20 are exact in float32


def test_render():
    env = ScriptedParallelEnv(render_mode="rgb_array")
    env.reset(seed=3)
    frame = env.render()
    assert frame.shape == (16, 16, 3) and frame.dtype == np.uint8
    with pytest.warns(UserWarning, match="render_mode"):
        assert ScriptedParallelEnv().render() is None
    with pytest.raises(ValueError):
        ScriptedParallelEnv(render_mode="human")


def test_env_is_picklable():
    env = ScriptedParallelEnv(agents=[0, 1], death_steps={1: 2})
    env.reset(seed=5)
    clone = pickle.loads(pickle.dumps(env))
    assert clone.agents == [0, 1] and clone.episode_id == 5
    factory = cloudpickle.loads(cloudpickle.dumps(lambda: RecordingParallelEnv(ScriptedParallelEnv())))
    assert isinstance(factory().unwrapped, ScriptedParallelEnv)


def test_recording_wrapper_records_actions_and_seeds():
    base = ScriptedParallelEnv(agents=[0, 1], death_steps={1: 1}, render_mode="rgb_array")
    env = RecordingParallelEnv(base)

    # forwarding
    assert env.possible_agents == [0, 1]
    assert env.metadata["name"] == "scripted_v0"
    assert env.render_mode == "rgb_array"
    assert env.observation_space(0) is base.observation_space(0)
    assert env.action_space(1) is base.action_space(1)
    assert env.unwrapped is base
    assert env.max_steps == 10  # other public attributes via __getattr__

    obs, _ = env.reset(seed=9, options={"x": 1})
    assert env.agents == [0, 1]
    assert obs[0][3:].size == 0 and base.episode_id == 9
    buf = {0: np.array(2), 1: np.int64(3)}
    env.step(buf)
    assert env.agents == [0]  # agent 1 died at step 1; forwarded live
    buf[0][...] = 0  # caller reuses its buffer in place
    env.step({0: np.int64(1)})
    env.reset()
    env.reset(seed=4)

    assert env.reset_seeds == [9, None, 4]
    assert env.reset_options == [{"x": 1}, None, None]
    assert len(env.action_log) == 2
    assert int(env.action_log[0][0]) == 2 and type(env.action_log[0][1]) is np.int64
    assert env.action_log[1] == {0: 1}
    assert env.render().shape == (16, 16, 3)

    env.close()
    assert env.close_count == 1 and base.closed
    env.clear()
    assert env.action_log == [] and env.reset_seeds == [] and env.close_count == 0


def test_recording_wrapper_on_real_mpe_env():
    simple_spread_v3 = pytest.importorskip("mpe2.simple_spread_v3")

    base = simple_spread_v3.parallel_env(N=2, max_cycles=5, continuous_actions=False)
    env = RecordingParallelEnv(base)
    parallel_api_test(env, num_cycles=10)
    obs, _ = env.reset(seed=123)
    assert set(obs) == set(env.possible_agents) == set(env.agents)
    actions = {a: env.action_space(a).sample() for a in env.agents}
    env.step(actions)
    assert env.reset_seeds[-1] == 123
    assert env.action_log[-1] == actions
    env.close()
