"""Bad input gets a clear error, at construction where possible."""

from __future__ import annotations

import re
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO

import npc_wrapper as nw
from tests.envs import RecordingEnvFactory, ScriptedParallelEnv


class CountingFactory:
    """Counts env constructions, so a test can tell construction-time errors from later ones."""

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.built: list[ScriptedParallelEnv] = []

    def __call__(self) -> ScriptedParallelEnv:
        env = ScriptedParallelEnv(**self.kwargs)
        self.built.append(env)
        return env


def test_bad_split_fails_at_construction(make_venv: Any) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_venv(lambda: ScriptedParallelEnv(), training_agents_pct=1.5)
    with pytest.raises(ValueError, match="match none"):
        make_venv(lambda: ScriptedParallelEnv(), training_agents=["zz_*"])


def test_npc_torch_module_with_wrong_input_size_names_both_spaces(make_venv: Any) -> None:
    factory = CountingFactory(agents=["a_0", "b_0"])
    with pytest.raises(ValueError) as err:
        make_venv(factory, num_envs=4, npc=torch.nn.Linear(5, 4), device="cpu")
    msg = str(err.value)
    assert "['b_0']" in msg and "dry-run" in msg
    assert "Box(-inf, inf, (3,), float32)" in msg and "Discrete(4)" in msg
    assert "mat1 and mat2 shapes cannot be multiplied" in msg  # the underlying error is kept
    assert len(factory.built) == 1 and factory.built[0].closed  # the probe env only, closed again


def test_npc_torch_module_with_one_float_output_is_rejected_at_construction(make_venv: Any) -> None:
    # A float (B, 1) for Discrete(4) is neither logits nor actions; it must not be cast to actions.
    with pytest.raises(ValueError) as err:
        make_venv(lambda: ScriptedParallelEnv(), npc=torch.nn.Linear(3, 1), device="cpu")
    msg = str(err.value)
    assert "dry-run" in msg and "shape (2, 1) and dtype torch.float32" in msg and "(B, 4)" in msg


def test_npc_returning_actions_outside_its_space_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"not in the action space.*values \[7, 7\]"):
        nw.make_vec_env(lambda: ScriptedParallelEnv(), npc=lambda obs: np.full(len(obs), 7))
    with pytest.raises(ValueError, match=r"not in the action space.*shape \(1,\)"):
        nw.make_vec_env(lambda: ScriptedParallelEnv(), npc=lambda obs: np.zeros(1, dtype=np.int64))


def test_sb3_npc_for_another_observation_space_is_rejected() -> None:
    wide = nw.make_vec_env(lambda: ScriptedParallelEnv(obs_shape=(6,)))
    model = PPO("MlpPolicy", wide, device="cpu")
    # Both sides named: the model's (6,) and the NPC agents' (3,), not a layer-size error from the dry run.
    with pytest.raises(ValueError, match=r"trained on observation space Box\(.*\(6,\).*NPC agents .*\(3,\)"):
        nw.make_vec_env(lambda: ScriptedParallelEnv(), npc=model, device="cpu")
    wide.close()


def test_sb3_npc_for_another_action_space_is_rejected() -> None:
    other = nw.make_vec_env(lambda: ScriptedParallelEnv(action_space=spaces.Discrete(3)))
    model = PPO("MlpPolicy", other, device="cpu")
    with pytest.raises(ValueError, match=r"action space Discrete\(3\), but .* Discrete\(4\)"):
        nw.make_vec_env(lambda: ScriptedParallelEnv(), npc=model, device="cpu")
    other.close()


def test_env_instances_and_mismatched_factories_are_refused() -> None:
    from functools import partial

    with pytest.raises(TypeError, match="not an env .*lambda: simple_tag_v3.parallel_env"):
        nw.make_vec_env(ScriptedParallelEnv(), 2)
    with pytest.raises(TypeError, match=r"env_fn\[1\] is a ScriptedParallelEnv"):
        nw.make_vec_env([ScriptedParallelEnv, ScriptedParallelEnv()])
    with pytest.raises(ValueError, match="num_envs=8 but env_fn is a list of 2"):
        nw.make_vec_env([ScriptedParallelEnv, ScriptedParallelEnv], 8)
    built: list[ScriptedParallelEnv] = []

    def tracked(**kwargs: object):
        def make() -> ScriptedParallelEnv:
            built.append(ScriptedParallelEnv(**kwargs))
            return built[-1]
        return make

    with pytest.raises(
        ValueError, match=r"possible_agents are \['a_0', 'b_0'\], the first env's \['a_0', 'a_1', 'b_0'\]"
    ):
        nw.make_vec_env([tracked(), tracked(agents=["a_0", "b_0"])])
    with pytest.raises(ValueError, match=r"agent 'a_0' has observation space Box\(.*\(5,\)"):
        nw.make_vec_env([tracked(), partial(tracked(obs_shape=(5,)))])
    assert all(env.closed for env in built)  # nothing left open


def test_empty_training_agents_and_stray_npc_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="training_agents is empty"):
        nw.make_vec_env(ScriptedParallelEnv, training_agents=[])
    for mapping in ({"b_*": "noop", "a_*": "random"}, {"a_*": "noop", "b_*": "random"}):
        with pytest.raises(ValueError, match=r"keys \['a_\*'\] drive no NPC agent .*match training agents"):
            nw.make_vec_env(ScriptedParallelEnv, training_agents_pct=0.67, npc=mapping)
    with pytest.raises(ValueError, match=r"keys \['c_\*'\] drive no NPC agent; the NPC agents are \['b_0'\]"):
        nw.make_vec_env(ScriptedParallelEnv, training_agents_pct=0.67, npc={"b_*": "noop", "c_*": "random"})
    # A final catch-all may find every NPC taken by the keys before it.
    nw.make_vec_env(ScriptedParallelEnv, training_agents_pct=0.67, npc={"b_*": "noop", "*": "random"}).close()


def test_a_typo_of_a_builtin_npc_says_which_was_meant() -> None:
    with pytest.raises(ValueError, match="did you mean 'random'"):
        nw.make_vec_env(ScriptedParallelEnv, npc="rando")


def test_npc_policy_built_for_other_spaces_is_rejected() -> None:
    policy = nw.RandomPolicy(spaces.Box(-1, 1, (3,), np.float32), spaces.Discrete(2))
    with pytest.raises(ValueError, match=r"was built for observation space .* Discrete\(2\)"):
        nw.make_vec_env(lambda: ScriptedParallelEnv(), npc=policy)


def test_unknown_npc_kind_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="is not a policy"):
        nw.make_vec_env(lambda: ScriptedParallelEnv(), npc=42)


def test_aec_env_with_several_learners_is_a_value_error_with_a_hint(make_venv: Any) -> None:
    """An AEC env is a turn-based game: one learner per env (simple_tag's AEC form, half of 4 agents)."""
    from mpe2 import simple_tag_v3

    with pytest.raises(ValueError, match=r"one learner per env .* training_agents=\['adversary_0'\]"):
        make_venv(lambda: simple_tag_v3.env(max_cycles=5))


@pytest.mark.parametrize("who", [["a_0", "a_1", "b_0"], ["b_0"]], ids=["training", "npc"])
def test_dict_spaces_are_a_clear_error(who: list[str]) -> None:
    nested = spaces.Dict({"img": spaces.Box(0, 255, (4, 4, 1), np.uint8), "vec": spaces.Box(-1, 1, (5,))})
    fn = lambda: ScriptedParallelEnv(per_agent_spaces={a: (nested, spaces.Discrete(4)) for a in who})
    with pytest.raises(ValueError, match=re.escape(f"agents {who!r} have spaces without") + ".*flatten_space"):
        nw.make_vec_env(fn, training_agents_pct=0.67)


def test_gymnasium_env_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="PettingZoo ParallelEnv"):
        nw.make_vec_env(lambda: gymnasium.make("CartPole-v1"))


def test_num_envs_below_one() -> None:
    with pytest.raises(ValueError, match="num_envs must be at least 1"):
        nw.make_vec_env(lambda: ScriptedParallelEnv(), num_envs=0)


# ----------------------------------------------------------------------------------------- step()
@pytest.fixture
def venv():
    v = nw.make_vec_env(lambda: ScriptedParallelEnv(), num_envs=2, training_agents_pct=0.67, npc="noop", seed=0)
    yield v
    v.close()


def test_step_before_reset(venv) -> None:
    with pytest.raises(RuntimeError, match=r"before reset\(\): call reset\(\)"):
        venv.step(np.zeros(4, dtype=np.int64))


@pytest.mark.parametrize("shape", [(3,), (4, 2), (2, 2), ()])
def test_actions_of_the_wrong_shape(venv, shape) -> None:
    venv.reset()
    with pytest.raises(ValueError, match=r"actions must have shape \(4,\) \(num_envs=2 x 2 training agents"):
        venv.step(np.zeros(shape, dtype=np.int64))


def test_discrete_action_out_of_range_names_slot_agent_and_space(venv) -> None:
    venv.reset()
    with pytest.raises(ValueError, match=r"action 4 for slot 3 \(env 1, agent 'a_1'\) is outside the action space "
                                         r"Discrete\(4\)"):
        venv.step(np.array([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"slot 0 \(env 0, agent 'a_0'\)"):
        venv.step(np.array([-1, 0, 0, 0]))
    # A rejected step changed nothing: the envs are still at step 0.
    obs, *_ = venv.step(np.array([0, 1, 2, 3]))
    np.testing.assert_array_equal(obs[:, 0], [1, 1, 1, 1])


def test_column_of_discrete_actions_is_accepted(venv) -> None:
    venv.reset()
    obs, *_ = venv.step(np.array([[1], [2], [3], [0]]))
    np.testing.assert_array_equal(obs[:, 2], [1, 2, 3, 0])


def test_integral_float_discrete_actions_are_sent_as_ints_and_fractional_ones_rejected(venv) -> None:
    venv.reset()
    obs, *_ = venv.step(np.array([1.0, 2.0, 3.0, 0.0]))  # e.g. from a float tensor
    np.testing.assert_array_equal(obs[:, 2], [1, 2, 3, 0])
    with pytest.raises(ValueError, match=r"action 1.5 for slot 1 .* Discrete\(4\)"):
        venv.step(np.array([1.0, 1.5, 3.0, 0.0]))


def test_box_actions_out_of_bounds_or_nan() -> None:
    box = spaces.Box(-1.0, 1.0, (2,), np.float32)
    venv = nw.make_vector_env(lambda: ScriptedParallelEnv(action_space=box), num_envs=2, training_agents_pct=0.67)
    venv.reset(seed=0)
    with pytest.raises(
        ValueError, match=r"slot 2 \(env 1, agent 'a_0'\) is outside the action space Box.*ClipAction"
    ):
        venv.step(np.array([[0, 0], [0, 0], [0, 1.5], [0, 0]], dtype=np.float32))
    with pytest.raises(ValueError, match="slot 1"):
        venv.step(np.array([[0, 0], [np.nan, 0], [0, 0], [0, 0]], dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        venv.step(np.zeros((4, 3), dtype=np.float32))
    venv.close()


def test_box_actions_rounded_past_a_bound_by_sb3_are_snapped_to_it() -> None:
    """SB3 unscales a saturated SAC/TD3 actor's tanh output without clipping, in float32: for the bound
    0.7 of Box(-3.3, 0.7) it gives 0.70000005. That is rounding, not a wrong action: it is clipped to
    the bound (the env checks what it gets), while anything further out is still refused."""
    from stable_baselines3 import SAC

    box = spaces.Box(-3.3, 0.7, (1,), np.float32)

    def factory() -> ScriptedParallelEnv:
        return ScriptedParallelEnv(action_space=box)

    venv = nw.make_vec_env(factory, num_envs=2, training_agents_pct=0.67, npc="random")
    model = SAC("MlpPolicy", venv, learning_starts=0, device="cpu", seed=0)
    with torch.no_grad():  # saturate the actor: tanh(100) == 1.0 in float32
        model.actor.mu.weight.zero_()
        model.actor.mu.bias.fill_(100.0)
    obs = venv.reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert (actions > box.high).all(), actions  # the overshoot this test is about really happens
    obs, *_ = venv.step(actions)
    np.testing.assert_array_equal(obs[:, 2], np.float32(0.7))  # the env got the bound itself
    venv.close()

    gym_venv = nw.make_vector_env(factory, num_envs=2, training_agents_pct=0.67, npc="random")
    gym_venv.reset(seed=0)
    obs, *_ = gym_venv.step(actions)
    np.testing.assert_array_equal(obs[:, 2], np.float32(0.7))
    with pytest.raises(ValueError, match="outside the action space"):  # more than rounding: refused
        gym_venv.step(np.full((4, 1), np.nextafter(np.float32(0.7), np.float32(1), dtype=np.float32) + 1e-5))
    gym_venv.close()


def test_step_after_close(venv) -> None:
    venv.reset()
    venv.close()
    with pytest.raises(RuntimeError, match="closed"):
        venv.step(np.zeros(4, dtype=np.int64))


class _Scripted(nw.NPCPolicy):
    """Acts with ``fn(n)`` after the construction's dry run (which gets valid zeros)."""

    def __init__(self, fn: Any) -> None:
        env = ScriptedParallelEnv()
        super().__init__(env.observation_space("b_0"), env.action_space("b_0"), "scripted")
        self.fn, self.calls = fn, 0

    def act(self, obs: np.ndarray, rows: np.ndarray, episode_start: np.ndarray) -> Any:
        self.calls += 1
        return np.zeros(len(rows), dtype=np.int64) if self.calls == 1 else self.fn(len(rows))


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (lambda n: np.zeros(1, dtype=np.int64),
         r"returned actions of shape \(1,\) for 2 live rows; .* \(2,\)"),
        (lambda n: np.zeros(2 * n, dtype=np.int64), r"returned actions of shape \(4,\) for 2 live rows"),
        (lambda n: np.full(n, 2.7), r"returned action 2.7, which is outside its action space Discrete\(4\)"),
        (lambda n: np.full(n, 7), r"returned action 7, which is outside"),
        (lambda n: np.full(n, -1), r"returned action -1, which is outside"),
        (lambda n: np.full(n, np.nan), r"returned action nan, which is outside"),
    ],
    ids=["too-few", "too-many", "fraction", "above", "negative", "nan"],
)
def test_bad_npc_actions_at_run_time_are_an_error_naming_the_policy(fn: Any, expected: str) -> None:
    """The dry run at construction passed; numpy would broadcast, truncate or cast these into the env."""
    venv = nw.make_vec_env(ScriptedParallelEnv, num_envs=2, training_agents_pct=0.67, npc=_Scripted(fn))
    policy = r"NPC policy _Scripted\(name='scripted'.*\(agents \['b_0'\]\) "
    with pytest.raises(ValueError, match=policy + expected):
        venv.reset()  # launches the first forward; its actions are checked when the step collects them
        venv.step(np.zeros(4, dtype=np.int64))
    venv.close()


def test_npc_actions_as_a_column_and_whole_floats_are_accepted() -> None:
    venv = nw.make_vec_env(RecordingEnvFactory(obs_shape=(3,)), num_envs=2, training_agents_pct=0.67,
                           npc=_Scripted(lambda n: np.full((n, 1), 3.0)))
    venv.reset()
    venv.step(np.zeros(4, dtype=np.int64))
    assert [log[-1]["b_0"] for log in venv.slots.first_of_env(venv.get_attr("action_log"))] == [3, 3]
    venv.close()
