"""The Gymnasium ``VectorEnv`` contract of ``make_vector_env``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.wrappers.vector import DictInfoToList, RecordEpisodeStatistics

import npc_wrapper as nw
from tests.envs import RecordingEnvFactory as EnvFactory
from tests.envs import ScriptedParallelEnv


def make(factory: Any, num_envs: int = 2, **kwargs: Any) -> nw.GymnasiumVectorEnv:
    kwargs.setdefault("training_agents_pct", 0.67)
    kwargs.setdefault("npc", "noop")
    return nw.make_vector_env(factory, num_envs=num_envs, **kwargs)


def test_spaces_and_shapes() -> None:
    envs = make(EnvFactory(), num_envs=3)
    assert isinstance(envs, VectorEnv) and isinstance(envs, nw.NPCVectorEnv)  # the former name, kept
    assert envs.num_envs == 6 and envs.num_sub_envs == 3
    assert envs.single_observation_space == spaces.Box(-np.inf, np.inf, (4,), np.float32)
    assert envs.single_action_space == spaces.Discrete(4)
    assert envs.observation_space == spaces.Box(-np.inf, np.inf, (6, 4), np.float32)
    assert envs.action_space == spaces.MultiDiscrete([4] * 6)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert envs.metadata["name"] == "scripted_v0"  # the PettingZoo env's metadata is kept
    obs, infos = envs.reset(seed=0)
    assert envs.observation_space.contains(obs)
    assert isinstance(infos, dict) and infos["agent"].tolist() == ["a_0", "a_1"] * 3
    assert infos["_agent"].all()
    obs, rew, term, trunc, infos = envs.step(envs.action_space.sample())
    assert envs.observation_space.contains(obs)
    assert rew.shape == (6,) and np.issubdtype(rew.dtype, np.floating)
    assert term.dtype == np.bool_ and trunc.dtype == np.bool_ and term.shape == trunc.shape == (6,)
    assert infos["step"].tolist() == [1] * 6
    envs.close()


def test_box_action_space_batched() -> None:
    box = spaces.Box(-1.0, 1.0, (2,), np.float32)
    envs = make(EnvFactory(action_space=box), num_envs=2)
    assert envs.single_action_space == box
    assert envs.action_space == spaces.Box(-1.0, 1.0, (4, 2), np.float32)
    envs.reset(seed=0)
    actions = np.array([[0.5, 0], [-0.25, 0], [1, 0], [0, 0]], dtype=np.float32)
    obs, *_ = envs.step(actions)
    np.testing.assert_allclose(obs[:, 2], [0.5, -0.25, 1, 0])
    envs.close()


def test_returned_arrays_are_not_aliased_to_internal_buffers() -> None:
    envs = make(EnvFactory(max_steps=3, death_steps={"a_1": 1}), num_envs=2)
    obs, _ = envs.reset(seed=0)
    history = []
    for t in range(1, 5):
        prev, prev_copy = obs, obs.copy()
        obs, rew, _term, _trunc, _infos = envs.step(np.ones(4, dtype=np.int64))
        np.testing.assert_array_equal(prev, prev_copy)  # a later step does not change what we got
        history.append(obs.copy())
        obs[...] = 123.0  # the caller may write into what it got; the env is not affected
        rew[...] = 5.0
    np.testing.assert_array_equal([h[:, 0] for h in history], [[1, 0, 1, 0], [2, 0, 2, 0], [0, 0, 0, 0], [1, 0, 1, 0]])
    envs.close()


def test_reset_with_options_and_infos() -> None:
    factory = EnvFactory()
    envs = make(factory)
    envs.reset(seed=1, options={"level": 2})
    assert [e.reset_options for e in factory.envs] == [[{"level": 2}]] * 2
    assert [e.reset_seeds for e in factory.envs] == [[1], [2]]
    envs.reset()
    assert [e.reset_seeds[-1] for e in factory.envs] == [None, None]
    envs.close()


def test_call_get_attr_set_attr() -> None:
    envs = make(lambda: ScriptedParallelEnv(obs_shape=(4,)), num_envs=2)
    envs.reset(seed=30)
    assert envs.get_attr("episode_id") == (30, 30, 31, 31)
    assert envs.call("agent_index", "b_0") == (2,) * 4
    envs.set_attr("max_steps", [1, 1, 5, 5])
    assert envs.get_attr("max_steps") == (1, 1, 5, 5)
    _, _, _, trunc, _ = envs.step(np.zeros(4, dtype=np.int64))
    assert trunc.tolist() == [True, True, False, False]
    envs.set_attr("max_steps", 7)
    assert envs.get_attr("max_steps") == (7,) * 4
    with pytest.raises(ValueError, match="one value per slot"):
        envs.set_attr("max_steps", [1, 2])
    envs.close()


def test_render_and_close() -> None:
    factory = EnvFactory(render_mode="rgb_array")
    envs = make(factory)
    assert envs.render_mode == "rgb_array"
    envs.reset(seed=9)
    frames = envs.render()  # one per slot, each sub-env's frame repeated for its slots
    assert len(frames) == 4 and all(f.shape == (16, 16, 3) for f in frames)
    assert [int(f[0, 0, 0]) for f in frames] == [9, 9, 10, 10]
    envs.close()
    envs.close()
    assert envs.closed and [e.close_count for e in factory.envs] == [1, 1]


def test_step_before_reset_and_after_close() -> None:
    envs = make(EnvFactory())
    with pytest.raises(RuntimeError, match=r"call reset\(\)"):
        envs.step(np.zeros(4, dtype=np.int64))
    envs.close()
    with pytest.raises(RuntimeError, match="closed"):
        envs.reset(seed=0)


def test_dict_info_to_list_and_record_episode_statistics_stack() -> None:
    envs = DictInfoToList(RecordEpisodeStatistics(make(EnvFactory(max_steps=2), num_envs=2)))
    envs.reset(seed=0)
    envs.step(np.zeros(4, dtype=np.int64))
    _, _, _, trunc, infos = envs.step(np.array([1, 0, 0, 0]))
    assert trunc.all() and isinstance(infos, list) and len(infos) == 4
    assert infos[0]["episode"]["r"] == pytest.approx(3.001)
    assert infos[1]["episode"]["l"] == 2
    np.testing.assert_array_equal(infos[0]["final_obs"], [2, 0, 1, 0])
    assert infos[0][nw.EPISODE_KEY]["outcome"] == "win"
    envs.close()


def test_cleanrl_style_loop() -> None:
    """The loop CleanRL's ppo.py runs: obs buffers, next_done from term | trunc, final_obs for bootstrapping."""
    envs = make(EnvFactory(max_steps=5, death_steps={"a_1": 3}), num_envs=4, npc="random")
    steps = 12
    obs_buf = np.zeros((steps, envs.num_envs, *envs.single_observation_space.shape), np.float32)
    done_buf = np.zeros((steps, envs.num_envs), bool)
    next_obs, _ = envs.reset(seed=0)
    next_done = np.zeros(envs.num_envs, bool)
    bootstrapped = 0
    for t in range(steps):
        obs_buf[t], done_buf[t] = next_obs, next_done
        next_obs, _reward, term, trunc, infos = envs.step(envs.action_space.sample())
        next_done = term | trunc
        if "final_obs" in infos:
            for k in np.flatnonzero(infos["_final_obs"] & trunc):
                assert infos["final_obs"][k][0] == 5  # truncated at max_steps
                bootstrapped += 1
    assert bootstrapped == 4 * 2  # a_0 of 4 envs truncated at steps 5 and 10
    assert done_buf.sum() == 4 * 2 + 4 * 2  # and a_1 died at steps 3 and 8 (all before step 12)
    envs.close()


def _assert_same_infos(a: Any, b: Any, path: str = "infos") -> None:
    """Equal keys in equal order, equal array types, dtypes, shapes and values, through nested dicts."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            _assert_same_infos(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, np.ndarray):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), path
        if a.dtype == object:
            for x, y in zip(a.tolist(), b.tolist()):
                _assert_same_infos(x, y, path)
        else:
            np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert a == b, path


def _random_info(rng: np.random.Generator, depth: int = 0) -> dict[str, Any]:
    """A slot info drawn from what envs put in theirs, reusing a few keys so slots share and mix them."""
    values = [
        lambda: int(rng.integers(9)), lambda: float(rng.random()), lambda: bool(rng.integers(2)),
        lambda: np.float32(rng.random()), lambda: np.int64(3), lambda: np.bool_(True), lambda: "red_0",
        lambda: None, lambda: rng.random(2), lambda: rng.integers(0, 9, (2, 2)).astype(np.uint8),
        lambda: [1, 2], lambda: np.zeros(3, np.float32),
    ]
    info: dict[str, Any] = {}
    for key in rng.choice(["a", "b", "c", "_a", "final_obs", "final_info", "d"], size=rng.integers(4)):
        if key in ("final_info", "d") and depth < 2 and rng.random() < 0.7:
            info[str(key)] = _random_info(rng, depth + 1)
        else:
            info[str(key)] = values[int(rng.integers(len(values)))]()
    return info


def test_batched_infos_equal_gymnasiums_add_info_slot_by_slot() -> None:
    """Infos are built per key, not per (slot, key) as Gymnasium's ``_add_info``: the same dict, to the
    dtype and key order, for any mix of value types, missing keys, nested dicts, repeated slots, and
    the irregular mixes (a dict and a scalar under one key, ``x`` beside ``_x``) it hands back."""
    envs = make(EnvFactory(), num_envs=3)
    rng = np.random.default_rng(0)
    for _ in range(300):
        slots = sorted(rng.choice(envs.num_envs, size=rng.integers(1, 8)).tolist())  # may repeat a slot
        items = [(k, _random_info(rng)) for k in slots]
        expected: dict[str, Any] = {}
        try:
            for k, info in items:
                expected = envs._add_info(expected, info, k)
        except Exception as e:  # noqa: BLE001 - some mixes break _add_info itself: the same error then
            with pytest.raises(type(e)):
                envs._batch_infos(items)
            continue
        _assert_same_infos(envs._batch_infos(items), expected)
    envs.close()
