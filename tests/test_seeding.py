"""Seeding: identical seeds and actions give identical trajectories, NPC actions included."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO

import npc_wrapper as nw
from tests.envs import RecordingParallelEnv, ScriptedParallelEnv

AGENTS = ["a_0", "a_1", "b_0", "c_0", "d_0", "e_0"]
OBS = spaces.Box(-np.inf, np.inf, (4,), np.float32)
ACT = spaces.Discrete(4)


class FlatLogits(torch.nn.Module):
    """Uniform logits: every action is a sample from the NPC's generator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 4)


def env_fn() -> RecordingParallelEnv:
    return RecordingParallelEnv(ScriptedParallelEnv(agents=AGENTS, obs_shape=(4,), max_steps=6,
                                                    death_steps={"a_1": 2, "c_0": 3}))


def npc_spec() -> dict[str, Any]:
    ppo = PPO("MlpPolicy", nw.make_vec_env(lambda: ScriptedParallelEnv(obs_shape=(4,))), seed=1, device="cpu")
    pool = nw.NPCPool([nw.RandomPolicy(OBS, ACT, name="r1"), nw.ConstantPolicy(OBS, ACT, action=3)])
    return {"b_*": "random", "c_*": FlatLogits(), "d_*": ppo, "e_*": pool}


def per_env(venv: Any, name: str) -> list[Any]:
    """Attribute ``name`` of each sub-env (``get_attr`` gives one per slot)."""
    return venv.slots.first_of_env(venv.get_attr(name))


def rollout(venv: Any, steps: int = 20, gym: bool = False, seed: int | list[int] | None = 0) -> dict[str, list]:
    """Reset with ``seed``, step with a fixed action sequence; return everything observable."""
    if gym:
        obs, _ = venv.reset(seed=seed)
    else:
        if seed is not None:
            venv.seed(seed)
        obs = venv.reset()
    for log in venv.get_attr("action_log"):
        log.clear()
    out: dict[str, list] = {"obs": [obs.copy()], "rew": [], "done": [], "outcome": []}
    actions = np.random.default_rng(123).integers(0, 4, size=(steps, venv.num_envs))
    for a in actions:
        if gym:
            obs, rew, term, trunc, infos = venv.step(a)
            done = term | trunc
            summaries = infos.get(nw.EPISODE_KEY, {}).get("npc", [])
        else:
            obs, rew, done, infos = venv.step(a)
            summaries = [i[nw.EPISODE_KEY]["npc"] for i in infos if nw.EPISODE_KEY in i]
        out["obs"].append(obs.copy())
        out["rew"].append(rew.copy())
        out["done"].append(done.copy())
        out["outcome"].append([str(s) for s in summaries])
    out["npc_actions"] = [
        [{k: v for k, v in step.items() if k not in venv.training_agents} for step in log]
        for log in per_env(venv, "action_log")
    ]
    return out


def assert_same(a: dict[str, list], b: dict[str, list]) -> None:
    for key in ("obs", "rew", "done"):
        np.testing.assert_array_equal(np.array(a[key]), np.array(b[key]), err_msg=key)
    assert a["outcome"] == b["outcome"]
    assert a["npc_actions"] == b["npc_actions"]


def npc_action_series(run: dict[str, list], agent: str) -> list[int]:
    return [step[agent] for env in run["npc_actions"] for step in env if agent in step]


def test_same_seed_same_trajectory_sb3() -> None:
    venv = nw.make_vec_env(env_fn, num_envs=3, npc=npc_spec(), training_agents_pct=0.34, device="cpu")
    first = rollout(venv)
    again = rollout(venv)  # the same env object re-seeded
    assert_same(first, again)
    fresh = nw.make_vec_env(env_fn, num_envs=3, npc=npc_spec(), training_agents_pct=0.34, device="cpu")
    assert_same(first, rollout(fresh))
    # Every kind of NPC really sampled: they are not constant, so equality above is not vacuous.
    for agent in ("b_0", "c_0", "d_0"):
        assert len(set(npc_action_series(first, agent))) > 1, agent
    assert len(set(npc_action_series(first, "e_0"))) > 1  # pool members drawn per env per episode

    other = rollout(venv, seed=1)
    assert not np.array_equal(np.array(first["obs"]), np.array(other["obs"]))
    for agent in ("b_0", "c_0", "d_0"):
        assert npc_action_series(first, agent) != npc_action_series(other, agent), agent
    venv.close()
    fresh.close()


def test_same_seed_same_trajectory_gym() -> None:
    envs = nw.make_vector_env(env_fn, num_envs=2, npc=npc_spec(), training_agents_pct=0.34, device="cpu")
    first = rollout(envs, gym=True)
    assert_same(first, rollout(envs, gym=True))
    other = rollout(envs, gym=True, seed=5)
    assert npc_action_series(first, "b_0") != npc_action_series(other, "b_0")
    assert [seeds[0] for seeds in per_env(envs, "reset_seeds")] == [0, 1]  # seed + sub-env index
    envs.close()


def test_make_vector_env_seed_seeds_the_first_reset_as_reset_seed_does() -> None:
    seeded = nw.make_vector_env(env_fn, num_envs=2, npc=npc_spec(), training_agents_pct=0.34, device="cpu",
                                seed=7)
    given = nw.make_vector_env(env_fn, num_envs=2, npc=npc_spec(), training_agents_pct=0.34, device="cpu")
    assert_same(rollout(seeded, gym=True, seed=None), rollout(given, gym=True, seed=7))
    assert seeded.np_random_seed == given.np_random_seed == 7
    assert [seeds[0] for seeds in per_env(seeded, "reset_seeds")] == [7, 8]
    seeded.reset()  # only the first reset takes it: later ones without a seed go on unseeded
    assert [seeds[-1] for seeds in per_env(seeded, "reset_seeds")] == [None, None]
    seeded.close()

    overridden = nw.make_vector_env(env_fn, num_envs=2, npc=npc_spec(), training_agents_pct=0.34, device="cpu",
                                    seed=7)
    assert_same(rollout(overridden, gym=True, seed=3), rollout(given, gym=True, seed=3))
    assert [seeds[0] for seeds in per_env(overridden, "reset_seeds")] == [3, 4]
    overridden.close()
    given.close()


def test_both_front_ends_give_one_trajectory_for_one_seed() -> None:
    kwargs: dict[str, Any] = dict(num_envs=2, training_agents_pct=0.34, device="cpu", seed=5)
    sb3 = rollout(nw.make_vec_env(env_fn, npc=npc_spec(), **kwargs), seed=None)
    gym = rollout(nw.make_vector_env(env_fn, npc=npc_spec(), **kwargs), gym=True, seed=None)
    for key in ("obs", "done"):
        np.testing.assert_array_equal(np.array(sb3[key]), np.array(gym[key]), err_msg=key)
    np.testing.assert_array_equal(np.array(sb3["rew"]), np.array(gym["rew"], dtype=np.float32))  # SB3's dtype
    assert sb3["npc_actions"] == gym["npc_actions"]
    assert np.array(sb3["done"]).any()  # episodes ended and reset within the rollout


def test_a_seed_that_is_not_an_int_is_refused(make_venv: Any) -> None:
    with pytest.raises(TypeError, match=r"seed must be an int \(sub-env i gets seed \+ i\) or None, got '3'"):
        make_venv(env_fn, seed="3")


def test_gym_seed_list_and_per_env_seeds() -> None:
    envs = nw.make_vector_env(env_fn, num_envs=3, npc="random", training_agents_pct=0.34)
    envs.reset(seed=10)
    assert [s[-1] for s in per_env(envs, "reset_seeds")] == [10, 11, 12]
    obs, _ = envs.reset(seed=[7, 3, 5])
    assert [s[-1] for s in per_env(envs, "reset_seeds")] == [7, 3, 5]
    np.testing.assert_array_equal(obs[:, 3], [7, 7, 3, 3, 5, 5])
    # A list seeds only the envs; the same list twice still gives the same trajectory.
    assert_same(rollout(envs, gym=True, seed=[7, 3, 5]), rollout(envs, gym=True, seed=[7, 3, 5]))
    with pytest.raises(ValueError, match=r"one value per PettingZoo env \(3\) or per slot \(6\), got 2"):
        envs.reset(seed=[1, 2])
    # Gymnasium's own form, one seed per vector index, works when each env's slots agree...
    envs.reset(seed=[7, 7, 3, 3, 5, 5])
    assert [s[-1] for s in per_env(envs, "reset_seeds")] == [7, 3, 5]
    # ...and is refused when they do not: one PettingZoo env takes one seed.
    with pytest.raises(ValueError, match=r"slots 2-3 different values \[3, 4\]"):
        envs.reset(seed=[7, 7, 3, 4, 5, 5])
    envs.close()


def test_gym_int_seed_sets_np_random() -> None:
    envs = nw.make_vector_env(env_fn, num_envs=2, npc="random", training_agents_pct=0.34)
    envs.reset(seed=3)
    first = envs.np_random_seed, envs.np_random.integers(1 << 30)
    envs.reset(seed=3)
    assert (envs.np_random_seed, envs.np_random.integers(1 << 30)) == first == (3, first[1])
    envs.close()


def test_npcs_are_seeded_from_the_first_seed_given() -> None:
    """A list whose first entry is None still seeds the NPCs (from its first seed)."""
    envs = nw.make_vector_env(env_fn, num_envs=2, npc="random", training_agents_pct=0.34)
    first, again = rollout(envs, gym=True, seed=[None, 4]), rollout(envs, gym=True, seed=[None, 4])
    assert first["npc_actions"] == again["npc_actions"]
    assert first["npc_actions"] != rollout(envs, gym=True, seed=[None, 5])["npc_actions"]
    envs.close()


def test_sb3_seed_is_seed_plus_env_index() -> None:
    venv = nw.make_vec_env(env_fn, num_envs=3, npc="random", training_agents_pct=0.34, seed=40)
    venv.reset()
    assert [s for s in per_env(venv, "reset_seeds")] == [[40], [41], [42]]
    venv.close()


def test_unseeded_resets_after_a_seeded_one_are_reproducible() -> None:
    venv = nw.make_vec_env(env_fn, num_envs=2, npc="random", training_agents_pct=0.34)
    first = rollout(venv, seed=3)
    follow_1 = rollout(venv, seed=None)
    rollout(venv, seed=3)
    follow_2 = rollout(venv, seed=None)
    assert_same(follow_1, follow_2)
    assert not np.array_equal(np.array(first["obs"]), np.array(follow_1["obs"]))
    venv.close()


def test_unseeded_runs_differ() -> None:
    a = nw.make_vec_env(env_fn, num_envs=2, npc="random", training_agents_pct=0.34)
    b = nw.make_vec_env(env_fn, num_envs=2, npc="random", training_agents_pct=0.34)
    assert npc_action_series(rollout(a, seed=None), "b_0") != npc_action_series(rollout(b, seed=None), "b_0")
    a.close()
    b.close()


def learned_parameters(seed: int) -> dict[str, torch.Tensor]:
    venv = nw.make_vec_env(lambda: ScriptedParallelEnv(obs_shape=(4,), max_steps=8, death_steps={"a_1": 3}),
                           num_envs=2, npc="random", training_agents_pct=0.67)
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=2, seed=seed, device="cpu",
                policy_kwargs={"net_arch": [16]})
    model.learn(1024)
    venv.close()
    return {k: v.clone() for k, v in model.policy.state_dict().items()}


def test_ppo_seed_gives_identical_learned_parameters() -> None:
    first, second, other = learned_parameters(0), learned_parameters(0), learned_parameters(1)
    assert first.keys() == second.keys()
    for k in first:
        torch.testing.assert_close(first[k], second[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("algo", ["RecurrentPPO", "MaskablePPO"])
def test_npcs_sampled_through_sb3_predict_follow_the_seed(algo: str) -> None:
    """RecurrentPPO and MaskablePPO NPCs sample inside SB3's predict, with torch's global RNG: the
    wrapper seeds each call from the NPC's own stream, so the vector's seed alone decides them."""
    sb3_contrib = pytest.importorskip("sb3_contrib")
    policy = "MlpLstmPolicy" if algo == "RecurrentPPO" else "MlpPolicy"
    model = getattr(sb3_contrib, algo)(policy, nw.make_vec_env(lambda: ScriptedParallelEnv(obs_shape=(4,))),
                                       n_steps=16, batch_size=16, seed=0, device="cpu")
    envs = nw.make_vector_env(env_fn, num_envs=2, npc={"*": model}, training_agents_pct=0.34, device="cpu")
    torch.manual_seed(1)
    first = rollout(envs, gym=True, seed=5)
    torch.manual_seed(2)  # the global RNG differs between the runs; the NPCs must not notice
    assert_same(first, rollout(envs, gym=True, seed=5))
    assert npc_action_series(first, "b_0") != npc_action_series(rollout(envs, gym=True, seed=6), "b_0")
    state = torch.random.get_rng_state()
    rollout(envs, gym=True, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # and the caller's RNG is left as it was
    envs.close()
