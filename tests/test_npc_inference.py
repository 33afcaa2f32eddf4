"""NPC inference inside ``step()``: one batched call per NPC policy, actions routed to the right agents."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO

import npc_wrapper as nw
from tests.envs import RecordingEnvFactory, ScriptedParallelEnv, is_integer_action

OBS3 = spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT4 = spaces.Discrete(4)


class CountingPolicy(nw.NPCPolicy):
    """Records every ``act`` call; acts ``(t + agent_index + row) % 4`` from the observation it gets."""

    def __init__(self, observation_space: spaces.Space = OBS3, action_space: spaces.Space = ACT4,
                 recurrent: bool = False) -> None:
        super().__init__(observation_space, action_space, name="counting")
        self.recurrent = recurrent
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def act(self, obs: np.ndarray, rows: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
        actions = ((obs[:, 0] + obs[:, 1]).astype(np.int64) + rows) % 4
        self.calls.append((obs.copy(), rows.copy(), episode_start.copy(), actions))
        return actions


#: Recording scripted envs with 3-dim observations (:data:`OBS3`).
recording_env = functools.partial(RecordingEnvFactory, obs_shape=(3,))


FOUR = ["a_0", "a_1", "b_0", "b_1"]


def test_one_batched_call_per_step_over_npc_rows_of_all_envs() -> None:
    policy = CountingPolicy()
    venv = nw.make_vec_env(recording_env(agents=FOUR, max_steps=50), num_envs=8, npc=policy, seed=0)
    venv.reset()
    rng = np.random.default_rng(0)
    for _ in range(5):
        policy.calls.clear()
        actions = rng.integers(0, 4, size=16)
        venv.step(actions)
        # Exactly one forward of 16 rows (8 envs x 2 NPCs), computed for the coming step.
        assert len(policy.calls) == 1
        obs, rows, _, npc_actions = policy.calls[0]
        assert obs.shape == (16, 3)
        np.testing.assert_array_equal(rows, np.arange(16))
        np.testing.assert_array_equal(obs[:, 1], [2, 3] * 8)  # never a training agent's row
        logs = venv.get_attr("action_log", indices=list(range(0, 16, 2)))
        # The trainer's actions of the step just taken reached the training agents in slot order.
        for e, log in enumerate(logs):
            assert log[-1]["a_0"] == actions[2 * e] and log[-1]["a_1"] == actions[2 * e + 1]
    # The NPC actions computed after the last step are the ones the next step sends.
    venv.step(np.zeros(16, dtype=np.int64))
    logs = venv.get_attr("action_log", indices=list(range(0, 16, 2)))
    for e, log in enumerate(logs):
        assert log[-1]["b_0"] == npc_actions[2 * e] and log[-1]["b_1"] == npc_actions[2 * e + 1]
        assert all(is_integer_action(log[-1][a]) for a in FOUR)
    venv.close()


def test_npc_actions_reach_their_agents_every_step() -> None:
    policy = CountingPolicy()
    venv = nw.make_vec_env(recording_env(agents=FOUR, max_steps=4), num_envs=3, npc=policy, seed=1)
    venv.reset()
    sent: list[np.ndarray] = []
    for _ in range(9):  # crosses two auto-resets
        sent.append(policy.calls[-1][3].reshape(3, 2))
        venv.step(np.ones(6, dtype=np.int64))
    for e, log in enumerate(venv.get_attr("action_log", indices=[0, 2, 4])):
        assert len(log) == 9
        for t, step in enumerate(log):
            assert (step["b_0"], step["b_1"]) == tuple(sent[t][e])
            # (t_in_episode + agent_index + row) % 4: the NPC saw its own obs for this step.
            t_ep = t % 4
            assert step["b_0"] == (t_ep + 2 + 2 * e) % 4 and step["b_1"] == (t_ep + 3 + 2 * e + 1) % 4
    venv.close()


def test_dead_npcs_are_not_run() -> None:
    policy = CountingPolicy()
    venv = nw.make_vec_env(recording_env(agents=FOUR, max_steps=6, death_steps={"b_0": 2}),
                           num_envs=4, npc=policy, seed=0)
    venv.reset()
    sizes = []
    for t in range(1, 8):
        policy.calls.clear()
        venv.step(np.zeros(8, dtype=np.int64))
        assert len(policy.calls) == 1
        obs, rows, _, _ = policy.calls[0]
        sizes.append(rows.tolist())
        if 2 <= t < 6:
            np.testing.assert_array_equal(obs[:, 1], [3, 3, 3, 3])  # only b_1's observations
    live_b1 = [1, 3, 5, 7]
    # After step 2, b_0 (rows 0, 2, 4, 6) is dead; at step 6 the envs reset and both run again.
    assert sizes == [list(range(8)), live_b1, live_b1, live_b1, live_b1, list(range(8)), list(range(8))]
    for log in venv.get_attr("action_log", indices=[0, 2, 4, 6]):
        assert [("b_0" in step) for step in log] == [True, True, False, False, False, False, True]
    venv.close()


def test_random_npc_is_uniform_over_the_action_space_and_sends_python_ints() -> None:
    venv = nw.make_vec_env(recording_env(agents=FOUR, max_steps=100, action_space=spaces.Discrete(5)),
                           num_envs=2, npc="random", seed=0)
    venv.reset()
    for _ in range(60):
        venv.step(np.zeros(4, dtype=np.int64))
    log = venv.get_attr("action_log", indices=[0])[0]
    acts = [step[a] for step in log for a in ("b_0", "b_1")]
    assert set(acts) == {0, 1, 2, 3, 4}
    assert all(is_integer_action(a) for a in acts)
    assert all(step["a_0"] == 0 for step in log)  # the trainer's agents never get NPC actions
    venv.close()


class StepPlusIndexLogits(torch.nn.Module):
    """Logits whose argmax is ``(t + agent_index) % 4``; sampling would give other actions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        best = (x[:, 0] + x[:, 1]).long() % 4
        return torch.nn.functional.one_hot(best, 4).float() * 3.0


def test_torch_module_npc_argmax_with_deterministic_npc() -> None:
    venv = nw.make_vec_env(recording_env(agents=FOUR, max_steps=20), num_envs=2, npc=StepPlusIndexLogits(),
                           deterministic_npc=True, device="cpu", seed=0)
    venv.reset()
    for _ in range(8):
        venv.step(np.zeros(4, dtype=np.int64))
    for log in venv.get_attr("action_log", indices=[0, 2]):
        for t, step in enumerate(log):
            assert step["b_0"] == (t + 2) % 4 and step["b_1"] == (t + 3) % 4
            assert is_integer_action(step["b_0"])
    venv.close()

    # Sampling from the same logits differs from the argmax somewhere.
    venv = nw.make_vec_env(recording_env(agents=FOUR, max_steps=20), num_envs=2, npc=StepPlusIndexLogits(),
                           device="cpu", seed=0)
    venv.reset()
    for _ in range(8):
        venv.step(np.zeros(4, dtype=np.int64))
    log = venv.get_attr("action_log", indices=[0])[0]
    assert any(step["b_0"] != (t + 2) % 4 for t, step in enumerate(log))
    venv.close()


class IntegerActions(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 1].long() * 2 + 1) % 4


def test_torch_module_returning_integer_actions() -> None:
    venv = nw.make_vec_env(recording_env(agents=FOUR), num_envs=2, npc=IntegerActions(), device="cpu")
    venv.reset()
    venv.step(np.zeros(4, dtype=np.int64))
    log = venv.get_attr("action_log", indices=[0])[0]
    assert log[0]["b_0"] == 1 and log[0]["b_1"] == 3  # (2*2+1)%4, (3*2+1)%4
    venv.close()


def test_sb3_model_npc_matches_model_predict() -> None:
    model = PPO("MlpPolicy", nw.make_vec_env(lambda: ScriptedParallelEnv(), num_envs=1), seed=0, device="cpu")
    # A randomly initialised policy is flat; scale the action head so predictions depend on the obs.
    with torch.no_grad():
        model.policy.action_net.weight.mul_(200.0)
    venv = nw.make_vec_env(recording_env(agents=FOUR, max_steps=12), num_envs=3, npc=model,
                           deterministic_npc=True, device="cpu", seed=0)
    venv.reset()
    for _ in range(10):
        venv.step(np.ones(6, dtype=np.int64))
    seen_actions = set()
    for log in venv.get_attr("action_log", indices=[0, 2, 4]):
        for t, step in enumerate(log):
            last = {a: -1.0 if t == 0 else float(log[t - 1][a]) for a in ("b_0", "b_1")}
            obs = np.array([[t, 2, last["b_0"]], [t, 3, last["b_1"]]], dtype=np.float32)
            expected, _ = model.predict(obs, deterministic=True)
            assert [step["b_0"], step["b_1"]] == expected.tolist()
            seen_actions.update(expected.tolist())
    assert len(seen_actions) > 1  # the check is not vacuous
    venv.close()


def test_plain_callable_npc() -> None:
    def policy(obs: np.ndarray) -> np.ndarray:
        return (obs[:, 0].astype(np.int64) + 1) % 4

    venv = nw.make_vec_env(recording_env(agents=FOUR), num_envs=2, npc=policy)
    assert venv.pools[0].members[0].name == "policy"
    venv.reset()
    for _ in range(3):
        venv.step(np.zeros(4, dtype=np.int64))
    log = venv.get_attr("action_log", indices=[2])[0]
    assert [step["b_1"] for step in log] == [1, 2, 3]
    venv.close()


def test_recurrent_npc_sees_episode_start_per_env() -> None:
    policy = CountingPolicy(recurrent=True)
    # Env 0 ends its episodes after 2 steps, env 1 after 3: episode starts differ per env.
    fns = [recording_env(agents=FOUR, max_steps=2), recording_env(agents=FOUR, max_steps=3)]
    venv = nw.make_vec_env(fns, npc=policy, seed=0)
    assert venv.num_envs == 4
    policy.calls.clear()
    venv.reset()
    starts = [policy.calls[-1][2].tolist()]
    for _ in range(6):
        venv.step(np.zeros(4, dtype=np.int64))
        starts.append(policy.calls[-1][2].tolist())
    # Rows: env 0 -> [0, 1], env 1 -> [2, 3]. Index = steps taken before the NPC acts.
    expected_env0 = [True, False, True, False, True, False, True]
    expected_env1 = [True, False, False, True, False, False, True]
    assert starts == [[s0, s0, s1, s1] for s0, s1 in zip(expected_env0, expected_env1)]
    venv.close()


def test_recurrent_ppo_npc_keeps_state_per_row() -> None:
    from sb3_contrib import RecurrentPPO

    train_env = nw.make_vec_env(lambda: ScriptedParallelEnv(), num_envs=1)
    model = RecurrentPPO("MlpLstmPolicy", train_env, seed=0, device="cpu",
                         policy_kwargs={"lstm_hidden_size": 8, "net_arch": []})
    with torch.no_grad():
        model.policy.action_net.weight.mul_(300.0)
    E = 3
    venv = nw.make_vec_env(recording_env(agents=FOUR, max_steps=5, death_steps={"b_0": 2}), num_envs=E,
                           npc=model, deterministic_npc=True, device="cpu", seed=0)
    venv.reset()
    for _ in range(7):
        venv.step(np.zeros(2 * E, dtype=np.int64))
    logs = venv.get_attr("action_log", indices=[2 * e for e in range(E)])

    # Replay the NPCs with the model's own predict, one LSTM state per (env, NPC) row.
    state = None
    alive = np.ones(2 * E, dtype=bool)
    for t in range(7):
        t_ep = t % 5
        if t_ep == 0:
            alive[:] = True
        rows = np.flatnonzero(alive)
        obs = []
        for r in rows:
            e, j = divmod(r, 2)
            agent = ("b_0", "b_1")[j]
            last = -1.0 if t_ep == 0 else float(logs[e][t - 1][agent])
            obs.append([t_ep, 2 + j, last])
        starts = np.full(len(rows), t_ep == 0)
        sub = None if state is None else tuple(s[:, rows] for s in state)
        acts, new = model.predict(np.array(obs, dtype=np.float32), sub, starts, deterministic=True)
        if state is None:
            state = tuple(np.zeros((s.shape[0], 2 * E, s.shape[2]), s.dtype) for s in new)
        for full, part in zip(state, new):
            full[:, rows] = part
        for r, a in zip(rows, acts):
            e, j = divmod(r, 2)
            assert logs[e][t][("b_0", "b_1")[j]] == a, (t, r)
        if t_ep == 1:
            alive[0::2] = False  # b_0 dies at step 2
    venv.close()


def test_only_training_agents_experience_is_returned() -> None:
    venv = nw.make_vec_env(recording_env(agents=["b_0", "a_0", "b_1", "a_1"], max_steps=3, death_steps={"b_1": 1}),
                           num_envs=2, training_agents=["a_*"], npc="random", seed=0)
    obs = venv.reset()
    assert obs.shape == (4, 3)
    np.testing.assert_array_equal(obs[:, 1], [1, 3, 1, 3])
    assert [i["agent"] for i in venv.reset_infos] == ["a_0", "a_1"] * 2
    actions = np.array([1, 2, 3, 0])
    for t in range(1, 4):
        obs, rew, done, infos = venv.step(actions)
        np.testing.assert_allclose(rew, t + 0.01 * np.array([1, 3, 1, 3]) + 0.001 * actions, rtol=1e-6)
        assert [i["agent"] for i in infos] == ["a_0", "a_1"] * 2
        if t < 3:
            # The NPC b_1 died at step 1; no training slot is done or padding because of it.
            assert not done.any() and not any(nw.PADDING_KEY in i for i in infos)
            np.testing.assert_array_equal(obs[:, 1], [1, 3, 1, 3])
    assert done.all()
    for info in infos:
        assert info["terminal_observation"][1] in (1, 3)
    venv.close()


@pytest.mark.parametrize("npc", ["random", "noop"])
def test_scripted_npcs_for_box_actions(npc: str) -> None:
    box = spaces.Box(-1.0, 1.0, (2,), np.float32)
    venv = nw.make_vec_env(recording_env(agents=FOUR, action_space=box), num_envs=2, npc=npc, seed=0)
    venv.reset()
    for _ in range(3):
        venv.step(np.zeros((4, 2), dtype=np.float32))
    log = venv.get_attr("action_log", indices=[0])[0]
    b = np.array([step["b_0"] for step in log])
    assert b.shape == (3, 2) and np.all(np.abs(b) <= 1)
    assert (np.abs(b).sum() > 0) == (npc == "random")
    venv.close()


def test_npc_does_not_alter_the_callers_model() -> None:
    """The NPC is a frozen snapshot: the model passed in stays trainable (self-play, leagues)."""
    module = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 4))
    module.train()
    venv = nw.make_vec_env(recording_env(agents=FOUR), num_envs=2, npc=module, device="cpu")
    assert module.training and all(p.requires_grad for p in module.parameters())
    venv.close()

    learner = PPO("MlpPolicy", nw.make_vec_env(lambda: ScriptedParallelEnv(), num_envs=2, training_agents_pct=0.67),
                  n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu")
    venv = nw.make_vec_env(recording_env(agents=FOUR), num_envs=2, npc=learner, device="cpu", seed=0)
    assert all(p.requires_grad for p in learner.policy.parameters())
    before = [p.detach().clone() for p in learner.policy.parameters()]
    learner.learn(32)  # the learner keeps training ...
    assert any(not torch.equal(b, p) for b, p in zip(before, learner.policy.parameters()))
    venv.reset()
    venv.step(np.zeros(4, dtype=np.int64))  # ... and the NPC snapshot keeps playing
    venv.close()
