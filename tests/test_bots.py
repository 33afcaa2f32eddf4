"""The connect-four bot on real connect_four_v3 positions, against an oracle that plays each legal
column in the env itself: it always plays legal columns, takes every win, blocks every immediate
threat, and otherwise plays a seeded random legal column; as an NPC it beats a random player."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces
from pettingzoo.classic import connect_four_v3
from pettingzoo.utils import AgentSelector

from npc_wrapper.bots import ConnectFourBot, connect_four_moves
from npc_wrapper.checkpoints import load_npc
from npc_wrapper.npcs.policies import check_npc_policy
from tests.turn_envs import TurnDriver


def columns_that_win(board: list[int], who: str) -> set[int]:
    """The columns where a piece of ``who`` dropped on ``board`` wins, as the env itself decides."""
    raw = connect_four_v3.raw_env()
    other = next(a for a in raw.possible_agents if a != who)
    wins = set()
    for column in range(7):
        if board[column] != 0:
            continue
        raw.reset()
        raw.board = list(board)
        raw._agent_selector = AgentSelector([who, other])  # who moves now, whoever's turn it is
        raw.agent_selection = raw._agent_selector.reset()
        raw.step(column)
        if raw.rewards[who] == 1:
            wins.add(column)
    return wins


@pytest.fixture(scope="module")
def positions() -> dict[str, np.ndarray | list[set[int]]]:
    """Every decision of 40 random games: the mover's observation and mask, and the oracle's answers."""
    rng = np.random.default_rng(0)
    obs, masks, wins, threats = [], [], [], []
    env = connect_four_v3.env()
    for game in range(40):
        env.reset(seed=game)
        for agent in env.agent_iter():
            o, _, terminated, truncated, _ = env.last()
            if terminated or truncated:
                env.step(None)
                continue
            board = list(env.unwrapped.board)
            other = next(a for a in env.agents if a != agent)
            obs.append(o["observation"])
            masks.append(o["action_mask"])
            wins.append(columns_that_win(board, agent))
            threats.append(columns_that_win(board, other))
            env.step(int(rng.choice(np.flatnonzero(o["action_mask"]))))
    return {"obs": np.stack(obs), "mask": np.stack(masks).astype(bool), "wins": wins, "threats": threats}


def test_bot_plays_legal_takes_wins_and_blocks(positions: dict) -> None:
    obs, mask, wins, threats = positions["obs"], positions["mask"], positions["wins"], positions["threats"]
    moves = connect_four_moves(obs, mask, np.random.default_rng(1))
    assert moves.shape == (len(obs),) and moves.dtype == np.int64
    assert mask[np.arange(len(obs)), moves].all()
    n_wins = n_blocks = 0
    for move, win, threat in zip(moves, wins, threats):
        if win:
            assert move in win
            n_wins += 1
        elif threat:
            assert move in threat
            n_blocks += 1
    assert n_wins >= 20 and n_blocks >= 20  # the positions test both rules
    # Elsewhere a random legal column: spread over the columns, and the same for the same seed.
    quiet = [i for i, (w, t) in enumerate(zip(wins, threats)) if not w and not t]
    assert len(set(moves[quiet].tolist())) == 7
    np.testing.assert_array_equal(moves, connect_four_moves(obs, mask, np.random.default_rng(1)))
    assert not np.array_equal(moves[quiet], connect_four_moves(obs, mask, np.random.default_rng(2))[quiet])
    # Without masks the legal columns are read off the board: the same moves.
    np.testing.assert_array_equal(moves, connect_four_moves(obs, None, np.random.default_rng(1)))


def test_bot_as_npc_beats_a_random_player() -> None:
    bot = ConnectFourBot(spaces.Box(0, 1, (6, 7, 2), np.int8), spaces.Discrete(7))
    bot.reset(num_rows=8, seed=0)

    def npc(obs: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return bot.act(obs, np.arange(len(obs)), np.zeros(len(obs), bool), mask=mask)

    driver = TurnDriver(connect_four_v3.env, num_envs=8, npc=npc, layout_kwargs={"seat": "random"})
    driver.play(150)
    results = [ep[-1].reward for e in range(8) for ep in driver.episodes(e)]
    assert len(results) >= 50
    assert np.mean(np.array(results) == -1) >= 0.8  # the learner (random) loses most games
    for env in driver.envs:  # the bot never played an illegal move
        assert all(m.mask[m.action] for m in env.live_moves())


def test_bot_loads_as_an_npc_spec() -> None:
    obs_space, act_space = spaces.Box(0, 1, (6, 7, 2), np.int8), spaces.Discrete(7)
    policy = load_npc("npc_wrapper.bots:ConnectFourBot", obs_space, act_space)
    assert isinstance(policy, ConnectFourBot) and policy.takes_mask
    check_npc_policy(policy, ["player_1"], obs_space, act_space)
    with pytest.raises(ValueError, match=r"ConnectFourBot plays connect_four_v3: it needs observations"):
        ConnectFourBot(spaces.Box(0, 1, (3, 3, 2), np.int8), spaces.Discrete(9))
