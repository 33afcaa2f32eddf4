"""Turn-based games through make_vec_env / make_vector_env: MaskablePPO on the SB3 front end as it is,
CleanRL-style masks and RecordEpisodeStatistics on the Gymnasium one, workers, NEXT_STEP, NPC masks
(random, torch, SB3 and MaskablePPO models, callables), seats, no-move poker hands, bad input."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from pettingzoo.classic import connect_four_v3, tictactoe_v3

import npc_wrapper as nw
from npc_wrapper.bots import connect_four_moves
from npc_wrapper.turn_engine import NO_MOVE_KEY
from tests.envs import ScriptedParallelEnv
from tests.turn_envs import RecordingAEC

sb3_contrib = pytest.importorskip("sb3_contrib")


def recorded_connect_four() -> RecordingAEC:
    return RecordingAEC(connect_four_v3.env())


def recorded_tictactoe() -> RecordingAEC:
    return RecordingAEC(tictactoe_v3.env())


def legal(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.where(masks, rng.random(masks.shape), -1.0).argmax(axis=1)


def recorders(venv: Any) -> list[RecordingAEC]:
    return [joint.env for joint in venv.engine.backend.joints]


def play(venv: Any, steps: int, seed: int = 0) -> list[tuple[Any, ...]]:
    """Random legal learner moves through the SB3 front end; every step's (obs, reward, done, info)."""
    rng = np.random.default_rng(seed)
    venv.seed(seed)
    venv.reset()
    out = []
    for _ in range(steps):
        obs, rewards, dones, infos = venv.step(legal(venv.action_masks(), rng))
        out.append((obs.copy(), rewards.copy(), dones.copy(), infos))
    return out


def test_maskable_ppo_trains_on_make_vec_env_directly() -> None:
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported

    venv = nw.make_vec_env(recorded_connect_four, num_envs=4, npc="random", seed=0, seat="random",
                           device="cpu")
    try:
        assert is_masking_supported(venv)
        model = MaskablePPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
        model.learn(256)
        masks = get_action_masks(venv)
        assert masks.shape == (4, 7) and masks.dtype == bool
        np.testing.assert_array_equal(masks, venv.action_masks())
        buffer = model.rollout_buffer
        taken = buffer.actions.reshape(-1).astype(int)
        assert buffer.action_masks.reshape(len(taken), 7)[np.arange(len(taken)), taken].all()
        assert len(model.ep_info_buffer) > 0
        for env in recorders(venv):  # no illegal move by anyone: the learner was masked, the NPC too
            assert all(m.mask[m.action] for m in env.live_moves())
    finally:
        venv.close()


def test_sb3_front_end_episode_contract() -> None:
    """Rewards add up to the env's own game totals; the done step has the terminal observation, SB3
    Monitor's episode, the wrapper's summary with the seat; the game's first turn comes back at once."""
    venv = nw.make_vec_env(recorded_tictactoe, num_envs=3, npc="random", seed=0, seat="random", device="cpu")
    steps = play(venv, 60)
    returns, games = np.zeros(3), {e: 0 for e in range(3)}
    for _, rewards, dones, infos in steps:
        returns += rewards
        for e in np.flatnonzero(dones):
            info = infos[e]
            env = recorders(venv)[e]
            summary = info["npc_wrapper/episode"]
            final = env.final_cumulative[games[e]]
            assert returns[e] == info["episode"]["r"] == summary["train_return"] == final[summary["seat"]]
            assert summary["npc_return"] == sum(v for a, v in final.items() if a != summary["seat"])
            assert summary["outcome"] == {1: "win", -1: "loss", 0: "draw"}[int(returns[e])]
            final_obs = env.final_obs[games[e]][summary["seat"]]
            np.testing.assert_array_equal(info["terminal_observation"], final_obs)
            assert info["TimeLimit.truncated"] is False
            returns[e] = 0
            games[e] += 1
    assert sum(games.values()) >= 10
    assert {s[3][0].get("npc_wrapper/episode", {}).get("seat") for s in steps} >= {"player_1", "player_2"}
    venv.close()


def test_gymnasium_front_end_masks_and_episode_statistics() -> None:
    envs = gymnasium.wrappers.vector.RecordEpisodeStatistics(
        nw.make_vector_env(recorded_connect_four, num_envs=3, npc="random", seat="random", device="cpu")
    )
    rng = np.random.default_rng(0)
    obs, infos = envs.reset(seed=0)
    assert obs.shape == (3, 6, 7, 2) and infos["action_mask"].shape == (3, 7) and infos["_action_mask"].all()
    returns, recorded = np.zeros(3), 0
    for _ in range(80):
        masks = infos["action_mask"]
        obs, rewards, terminated, truncated, infos = envs.step(legal(masks, rng))
        returns += rewards
        assert infos["action_mask"].shape == (3, 7) and infos["action_mask"].any(axis=1).all()
        for e in np.flatnonzero(terminated | truncated):
            assert infos["episode"]["r"][e] == returns[e]
            assert infos["final_obs"][e].shape == (6, 7, 2)
            recorded += 1
            returns[e] = 0
        # The mask given is the one of the observation returned (the next game's first turn after a done):
        # a column is legal while its top cell is empty.
        np.testing.assert_array_equal(infos["action_mask"], obs[:, 0].sum(axis=-1) == 0)
    assert recorded >= 5
    envs.close()


def test_workers_give_the_same_games() -> None:
    runs = []
    for workers in (0, 2):
        venv = nw.make_vec_env(connect_four_v3.env, num_envs=4, npc="random", seed=3, seat="random",
                               num_workers=workers, device="cpu")
        runs.append(play(venv, 40, seed=3))
        venv.close()
    for (o0, r0, d0, i0), (o1, r1, d1, i1) in zip(*runs):
        np.testing.assert_array_equal(o0, o1)
        np.testing.assert_array_equal(r0, r1)
        np.testing.assert_array_equal(d0, d1)
        assert [i.get("npc_wrapper/episode") for i in i0] == [i.get("npc_wrapper/episode") for i in i1]


def test_next_step_autoreset() -> None:
    envs = nw.make_vector_env(connect_four_v3.env, num_envs=2, npc="npc_wrapper.bots:ConnectFourBot",
                              autoreset_mode=AutoresetMode.NEXT_STEP, device="cpu")
    rng = np.random.default_rng(0)
    obs, infos = envs.reset(seed=0)
    delivered = 0
    for _ in range(60):
        obs, rewards, terminated, truncated, infos = envs.step(legal(infos["action_mask"], rng))
        done = terminated | truncated
        if done.any():
            e = int(np.flatnonzero(done)[0])
            assert obs[e].sum() >= 4  # the terminal board: at least a four of someone
            obs, rewards, terminated, truncated, infos = envs.step(legal(infos["action_mask"], rng))
            assert rewards[e] == 0 and not terminated[e] and not truncated[e]
            assert obs[e].sum() <= 1  # the next game's first turn: empty, or the bot's opening
            delivered += 1
    assert delivered >= 2
    envs.close()


def test_seeded_runs_are_identical() -> None:
    def run(seed: int) -> list[Any]:
        venv = nw.make_vec_env(connect_four_v3.env, num_envs=3, npc="npc_wrapper.bots:ConnectFourBot",
                               seed=seed, seat="random", device="cpu")
        steps = play(venv, 30, seed=seed)
        venv.close()
        return [(o.tobytes(), r.tolist(), d.tolist()) for o, r, d, _ in steps]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_random_seats_are_balanced_and_reported() -> None:
    venv = nw.make_vec_env(tictactoe_v3.env, num_envs=8, npc="random", seed=0, seat="random", device="cpu")
    seats = [info["npc_wrapper/episode"]["seat"] for *_, infos in play(venv, 250) for info in infos
             if "npc_wrapper/episode" in info]
    counts = np.array([seats.count("player_1"), seats.count("player_2")])
    expected = counts.sum() / 2
    assert counts.sum() >= 200 and ((counts - expected) ** 2 / expected).sum() < 10.83
    assert venv.training_agents == ["player_1", "player_2"]
    venv.close()


# ----------------------------------------------------------------------------------------- NPC masks
class PrefersIllegal(torch.nn.Module):
    """Logits that put almost all probability on column 0, legal or not."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(obs), 7)
        logits[:, 0] = 50.0
        return logits


def sb3_connect_four_model(algo: str) -> Any:
    venv = nw.make_vec_env(connect_four_v3.env, num_envs=2, npc="random", seed=0, device="cpu")
    if algo == "PPO":
        from stable_baselines3 import PPO

        model = PPO("MlpPolicy", venv, n_steps=16, batch_size=32, seed=0, device="cpu")
    else:
        model = sb3_contrib.MaskablePPO("MlpPolicy", venv, n_steps=16, batch_size=32, seed=0, device="cpu")
    venv.close()
    return model


@pytest.mark.parametrize(
    "npc", ["random", "torch", "deterministic torch", "PPO", "MaskablePPO", "bot", "callable"]
)
def test_masked_npcs_never_play_illegal_moves(npc: str) -> None:
    def with_mask(obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return connect_four_moves(obs, mask, np.random.default_rng(0))

    spec = {
        "random": "random",
        "torch": PrefersIllegal(),
        "deterministic torch": PrefersIllegal(),
        "PPO": sb3_connect_four_model("PPO") if npc == "PPO" else None,
        "MaskablePPO": sb3_connect_four_model("MaskablePPO") if npc == "MaskablePPO" else None,
        "bot": "npc_wrapper.bots:ConnectFourBot",
        "callable": with_mask,
    }[npc]
    venv = nw.make_vec_env(recorded_connect_four, num_envs=4, npc=spec, seed=0, seat="random", device="cpu",
                           deterministic_npc=npc == "deterministic torch")
    play(venv, 80)
    moves = [m for env in recorders(venv) for m in env.live_moves()]
    assert len(moves) > 200
    assert all(m.mask[m.action] for m in moves)  # the learner's are masked too (play() draws legal ones)
    if npc in ("torch", "deterministic torch"):  # column 0 whenever it is legal, never when it is full
        npc_moves = [m for env in recorders(venv) for m in env.live_moves() if m.mask[0]]
        assert sum(m.action == 0 for m in npc_moves) > len(npc_moves) / 3
    venv.close()


def test_npc_that_cannot_take_masks_is_refused() -> None:
    message = r"does not take action masks, but the env gives those agents masks.*`mask`"
    with pytest.raises(ValueError, match=message):
        nw.make_vec_env(connect_four_v3.env, npc=lambda obs: np.zeros(len(obs), np.int64), device="cpu")

    class Plain(nw.NPCPolicy):
        def act(self, obs: np.ndarray, rows: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
            return np.zeros(len(rows), np.int64)

    obs_space, act_space = spaces.Box(0, 1, (6, 7, 2), np.int8), spaces.Discrete(7)
    with pytest.raises(ValueError, match="takes_mask = True on an NPCPolicy subclass"):
        nw.make_vec_env(connect_four_v3.env, npc=Plain(obs_space, act_space), device="cpu")


def test_illegal_npc_move_names_the_policy() -> None:
    def column_zero(obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.zeros(len(obs), np.int64)  # takes masks, ignores them

    venv = nw.make_vec_env(connect_four_v3.env, num_envs=2, npc=column_zero, seed=0, device="cpu",
                           training_agents=["player_1"])
    venv.reset()
    message = (r"NPC policy .*column_zero.* played 0 for agent 'player_0', an action its mask forbids "
               r"\(legal: \[1, 2, 3, 4, 5, 6\]")
    with pytest.raises(ValueError, match=message):
        for _ in range(3):  # both play column 0 (no four: they alternate) until it is full; the NPC insists
            venv.step(np.zeros(2, np.int64))
    venv.close()
    noop = nw.make_vec_env(tictactoe_v3.env, num_envs=1, npc="noop", seed=0, device="cpu")
    noop.reset()
    with pytest.raises(ValueError, match=r"ConstantPolicy.* played 0 for agent 'player_2', an action its"):
        noop.step(np.array([0]))  # the learner takes square 0, where the noop NPC always plays
    noop.close()


# ------------------------------------------------------------------------------------------------ poker
def fold_or_first(obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RLCard limit hold'em: fold (action 2) where legal, else the lowest legal action."""
    return np.where(mask[:, 2], 2, mask.argmax(axis=1))


def test_four_player_poker_and_hands_without_a_learner_move() -> None:
    texas_holdem_v4 = pytest.importorskip("pettingzoo.classic.texas_holdem_v4", exc_type=ImportError)
    venv = nw.make_vec_env(lambda: texas_holdem_v4.env(num_players=4), num_envs=4, npc=fold_or_first, seed=0,
                           training_agents=["player_1"], device="cpu")
    assert venv.npc_agents == ["player_0", "player_2", "player_3"]
    no_move = episodes = 0
    for *_, infos in play(venv, 60):
        for info in infos:
            if NO_MOVE_KEY in info:
                no_move += info[NO_MOVE_KEY]["episodes"]
                assert info[NO_MOVE_KEY]["train_return"] > 0  # the blinds it won without a move
            episodes += "npc_wrapper/episode" in info
    assert no_move >= 5 and episodes >= 20
    venv.close()


# -------------------------------------------------------------------------------------------- bad input
def test_bad_seat_arguments() -> None:
    message = r"seat='random' draws the learner's seat of a turn-based game, but env_fn builds a Scripted"
    with pytest.raises(ValueError, match=message):
        nw.make_vec_env(lambda: ScriptedParallelEnv(), seat="random")
    with pytest.raises(ValueError, match=r"seat must be one of \['fixed', 'random'\], got 'left'"):
        nw.make_vector_env(connect_four_v3.env, seat="left")
    with pytest.raises(ValueError, match="reset_when_training_agents_dead=False does not apply to a turn-"):
        nw.make_vec_env(connect_four_v3.env, reset_when_training_agents_dead=False)


def test_action_masks_on_an_env_without_masks() -> None:
    venv = nw.make_vec_env(lambda: ScriptedParallelEnv(), num_envs=2, training_agents_pct=0.5)
    from sb3_contrib.common.maskable.utils import is_masking_supported

    assert not is_masking_supported(venv)
    with pytest.raises(AttributeError, match="this env gives no action masks"):
        venv.action_masks()
    venv.close()


def test_learner_actions_are_checked() -> None:
    venv = nw.make_vec_env(connect_four_v3.env, num_envs=2, seed=0, device="cpu", seat="random")
    venv.reset()
    with pytest.raises(ValueError, match=r"action 7 for slot 1 \(env 1, agent 'player_[01]'\) is outside"):
        venv.step(np.array([0, 7]))
    with pytest.raises(ValueError, match=r"action 0.5 for slot 0"):
        venv.step(np.array([0.5, 1.0]))
    venv.close()


def test_readme_turn_based_examples_run() -> None:
    """The README's "Turn-based games" code blocks run as written (MaskablePPO for fewer steps)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Turn-based games"):readme.index("## NPCs from checkpoints")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block.replace("model.learn(20_000)", "model.learn(256)"), "README.md", "exec"), {})


# ------------------------------------------------------------------------------------ dict observations
def _reset(venv: Any) -> tuple[Any, np.ndarray]:
    """Either front end's reset (seed 1) as (obs, masks)."""
    if isinstance(venv, gymnasium.vector.VectorEnv):
        obs, infos = venv.reset(seed=1)
        return obs, infos["action_mask"]
    venv.seed(1)
    return venv.reset(), venv.action_masks()


def _step(venv: Any, actions: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[int, Any]]:
    """Either front end's step as (obs, rewards, dones, the returned obs' masks, terminal obs by slot)."""
    if isinstance(venv, gymnasium.vector.VectorEnv):
        obs, rewards, terminated, truncated, infos = venv.step(actions)
        done = terminated | truncated
        finals = {e: infos["final_obs"][e] for e in np.flatnonzero(done)}
        return obs, rewards, done, infos["action_mask"], finals
    obs, rewards, dones, infos = venv.step(actions)
    finals = {e: infos[e]["terminal_observation"] for e in np.flatnonzero(dones)}
    return obs, rewards, dones, venv.action_masks(), finals


@pytest.mark.parametrize("workers", [0, 2])
def test_dict_observations_serve_the_whole_classic_dict(make_venv: Any, workers: int) -> None:
    """The slots observe the env's whole Dict (the terminal observation too); its 'observation' entry, the
    rewards and the served masks are those of the same run without the option; its mask is the served one."""
    args = dict(num_envs=4, npc="npc_wrapper.bots:ConnectFourBot", seat="random", num_workers=workers,
                device="cpu")
    whole = make_venv(connect_four_v3.env, dict_observations=True, **args)
    plain = make_venv(connect_four_v3.env, **args)
    single = getattr(whole, "single_observation_space", whole.observation_space)
    assert single == connect_four_v3.env().observation_space("player_0")
    rng, ended = np.random.default_rng(1), 0
    try:
        (obs, masks), (p_obs, p_masks) = _reset(whole), _reset(plain)
        for _ in range(60):
            assert set(obs) == {"observation", "action_mask"} and obs["action_mask"].dtype == np.int8
            np.testing.assert_array_equal(obs["observation"], p_obs)
            np.testing.assert_array_equal(obs["action_mask"].astype(bool), masks)
            np.testing.assert_array_equal(masks, p_masks)
            actions = legal(masks, rng)
            obs, rewards, dones, masks, finals = _step(whole, actions)
            p_obs, p_rewards, p_dones, p_masks, p_finals = _step(plain, actions)
            np.testing.assert_array_equal(rewards, p_rewards)
            np.testing.assert_array_equal(dones, p_dones)
            for e, final in finals.items():
                np.testing.assert_array_equal(final["observation"], p_finals[e])
                # The env's own mask at the learner's dead step: the columns whose top cell is empty.
                np.testing.assert_array_equal(final["action_mask"], final["observation"][0].sum(axis=-1) == 0)
                assert single.contains(final)
                ended += 1
        assert ended >= 4
    finally:
        whole.close()
        plain.close()


def test_dict_observations_next_step_shows_the_terminal_dict() -> None:
    envs = nw.make_vector_env(connect_four_v3.env, num_envs=2, npc="npc_wrapper.bots:ConnectFourBot", seed=0,
                              autoreset_mode=AutoresetMode.NEXT_STEP, dict_observations=True, device="cpu")
    rng = np.random.default_rng(0)
    obs, infos = envs.reset()
    delivered = 0
    for _ in range(60):
        obs, rewards, terminated, truncated, infos = envs.step(legal(infos["action_mask"], rng))
        assert envs.observation_space.contains(obs)
        for e in np.flatnonzero(terminated | truncated):
            board = obs["observation"][e]
            assert board.sum() >= 4  # the terminal board, with the env's mask of it
            np.testing.assert_array_equal(obs["action_mask"][e], board[0].sum(axis=-1) == 0)
            delivered += 1
    assert delivered >= 2
    envs.close()


def test_maskable_ppo_multi_input_policy_trains_on_dict_observations() -> None:
    from sb3_contrib import MaskablePPO

    venv = nw.make_vec_env(recorded_tictactoe, num_envs=4, npc="random", seed=0, seat="random",
                           dict_observations=True, device="cpu")
    try:
        model = MaskablePPO("MultiInputPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0,
                            device="cpu")
        model.learn(256)
        assert len(model.ep_info_buffer) > 0
        for env in recorders(venv):  # the learner was masked through venv.action_masks()
            assert all(m.mask[m.action] for m in env.live_moves())
    finally:
        venv.close()


def test_dict_observations_bad_input() -> None:
    from mpe2 import simple_tag_v3

    with pytest.raises(ValueError, match=r"^dict_observations=True serves the learner's whole classic Dict "
                                         r"observation .* but agent 'agent_0' observes Box\("):
        nw.make_vec_env(simple_tag_v3.env, training_agents=["agent_0"], dict_observations=True)
    message = "but env_fn builds a ScriptedParallelEnv, not a PettingZoo AECEnv: leave dict_observations=False"
    with pytest.raises(ValueError, match=message):
        nw.make_vector_env(lambda: ScriptedParallelEnv(), dict_observations=True)
    with pytest.raises(TypeError, match="dict_observations must be True or False, got 'yes'"):
        nw.make_vec_env(connect_four_v3.env, dict_observations="yes")
