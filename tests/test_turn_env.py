"""TurnJointEnv on real PettingZoo classic envs, played in rounds by a small driver with batched NPCs:
the learner sees exactly its own turns from its own seat, rewards add up to the env's own, games
that end on an NPC's move reach the learner as done, NPCs never play an illegal move, seeds
reproduce, random seats are balanced; and bad input gets a clear error."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gymnasium import spaces
from pettingzoo.classic import connect_four_v3, tictactoe_v3
from pettingzoo.utils import BaseWrapper

from npc_wrapper.bots import connect_four_moves
from npc_wrapper.masks import MASK_KEY, ActionMask, masked_observation_space
from npc_wrapper.turn_env import (
    LEARNER,
    MAX_NO_MOVE_EPISODES,
    TurnBuffers,
    TurnJointEnv,
    build_turn_layout,
    step_learners,
    step_npcs,
)
from tests.turn_envs import TurnDriver, first_legal, random_legal

GAMES = {"tictactoe": tictactoe_v3.env, "connect_four": connect_four_v3.env}


def bot(obs: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return connect_four_moves(obs, mask, rng)


def holdem(num_players: int = 4) -> Any:
    texas_holdem_v4 = pytest.importorskip("pettingzoo.classic.texas_holdem_v4", exc_type=ImportError)
    return texas_holdem_v4.env(num_players=num_players)


def check_turns(driver: TurnDriver) -> None:
    """The learner's moves are exactly the recorded moves of its seat in each episode, with the
    observations and masks the env gives that seat; every other live move is an NPC's, legal, made
    on the NPC's own observation."""
    for e, env in enumerate(driver.envs):
        learner_seat = {s.episode: s.agent for s in driver.steps[e]}
        recorded = env.live_moves()
        # The learner's steps whose move was played (the last ones may still be waiting on nothing).
        mine = [m for m in recorded if learner_seat.get(m.episode) == m.agent]
        assert len(mine) == len(driver.steps[e])
        for m, s in zip(mine, driver.steps[e]):
            assert (m.episode, m.agent, m.action) == (s.episode, s.agent, s.action)
            np.testing.assert_array_equal(s.obs, m.obs)
            np.testing.assert_array_equal(s.mask, m.mask)
        theirs = [m for m in recorded if learner_seat.get(m.episode) != m.agent]
        assert len(theirs) == len(driver.npc_moves[e])
        for m, (episode, agent, obs, mask, action) in zip(theirs, driver.npc_moves[e]):
            assert (m.episode, m.agent, m.action) == (episode, agent, action)
            np.testing.assert_array_equal(obs, m.obs)
            np.testing.assert_array_equal(mask, m.mask)
            assert m.mask[m.action], f"NPC {agent} played illegal action {action}"


@pytest.mark.parametrize("game", GAMES)
@pytest.mark.parametrize("seat", ["player_first", "player_second", "random"])
def test_learner_sees_only_its_own_turns(game: str, seat: str) -> None:
    make = GAMES[game]
    agents = make().possible_agents
    kwargs = {"seat": "random"} if seat == "random" else {
        "training_agents": [agents[0] if seat == "player_first" else agents[1]]
    }
    driver = TurnDriver(make, num_envs=3, layout_kwargs=kwargs)
    driver.play(60)
    check_turns(driver)
    seats = {s.agent for steps in driver.steps for s in steps}
    assert seats == (set(agents) if seat == "random" else {kwargs["training_agents"][0]})
    # Moving second: every first observation of an episode shows the NPC's opening move.
    if seat == "player_second":
        firsts = [ep[0] for e in range(3) for ep in driver.episodes(e)]
        assert firsts and all(s.obs[..., 1].sum() == 1 and s.obs[..., 0].sum() == 0 for s in firsts)


@pytest.mark.parametrize("game", GAMES)
def test_rewards_sum_to_the_envs_own(game: str) -> None:
    """Classic board games never zero the mover's _cumulative_rewards: at the game's end it holds each
    agent's whole-game reward, which the learner's (and the NPC's) step rewards must add up to."""
    driver = TurnDriver(GAMES[game], num_envs=3, layout_kwargs={"seat": "random"})
    driver.play(80)
    n_games = 0
    for e, env in enumerate(driver.envs):
        for episode in driver.episodes(e):
            index, learner = episode[0].episode, episode[0].agent
            final = env.final_cumulative[index]
            npc = next(a for a in final if a != learner)
            assert sum(s.reward for s in episode) == final[learner]
            assert sum(s.npc_reward for s in episode) == final[npc]
            assert all(s.reward == 0 for s in episode[:-1])  # only the last move is rewarded
            n_games += 1
    assert n_games >= 10


def test_game_ended_by_the_npc_arrives_as_done() -> None:
    """The bot wins games on its own move: the learner gets done, -1, the final board as it sees it."""
    second = {"training_agents": ["player_1"]}
    driver = TurnDriver(connect_four_v3.env, num_envs=4, npc=bot, layout_kwargs=second)
    driver.play(100)
    ended_by_npc = 0
    for e, env in enumerate(driver.envs):
        for episode in driver.episodes(e):
            last = episode[-1]
            last_move = [m for m in env.live_moves() if m.episode == last.episode][-1]
            if last_move.agent == "player_1":
                continue
            ended_by_npc += 1
            assert (last.terminated, last.truncated) == (True, False)
            assert last.reward == env.final_cumulative[last.episode]["player_1"] == -1
            np.testing.assert_array_equal(last.final_obs, env.final_obs[last.episode]["player_1"])
            # The final board has the bot's winning piece: one more of its pieces than the learner saw.
            assert last.final_obs[..., 1].sum() == last.obs[..., 1].sum() + 1
    assert ended_by_npc >= 5


def test_illegal_learner_move_goes_to_the_env() -> None:
    """tictactoe's TerminateIllegalWrapper ends the game with both flags set and -1 for the mover; the
    wrapper passes the move on unchanged."""
    driver = TurnDriver(tictactoe_v3.env, num_envs=2, layout_kwargs={"training_agents": ["player_1"]})
    driver.reset(seed=3)
    assert driver.buf.train_mask.all()  # player_1 opens on an empty board
    driver.step(np.zeros(2, dtype=np.int64))
    assert not driver.buf.train_mask[:, 0].any()
    driver.step(np.zeros(2, dtype=np.int64))  # square 0 again: taken by the learner itself
    for e, env in enumerate(driver.envs):
        last = driver.steps[e][-1]
        assert (env.live_moves()[-1].agent, env.live_moves()[-1].action) == ("player_1", 0)
        assert (last.terminated, last.truncated, last.reward) == (True, True, -1)
        assert env.final_cumulative[0] == {"player_1": -1, "player_2": 0}


@pytest.mark.parametrize("seat", ["fixed", "random"])
def test_seeded_runs_are_identical(seat: str) -> None:
    def run(seed: int) -> tuple[list[Any], ...]:
        driver = TurnDriver(connect_four_v3.env, num_envs=3, npc_seed=seed, layout_kwargs={"seat": seat})
        driver.play(40, seed=seed)
        steps = [(s.agent, s.obs.tobytes(), s.action, s.reward) for e in range(3) for s in driver.steps[e]]
        npc = [(m[1], m[4]) for e in range(3) for m in driver.npc_moves[e]]
        return steps, npc, driver.buf.seat.tolist()

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_random_seats_are_balanced() -> None:
    driver = TurnDriver(tictactoe_v3.env, num_envs=8, npc=first_legal, layout_kwargs={"seat": "random"})
    driver.play(400, learner=first_legal)
    seats = [ep[0].agent for e in range(8) for ep in driver.episodes(e)]
    counts = np.array([seats.count(a) for a in ("player_1", "player_2")])
    expected = counts.sum() / 2
    assert counts.sum() >= 300
    assert ((counts - expected) ** 2 / expected).sum() < 10.83  # chi-square, 1 dof, p = 0.001
    ended = driver.buf.ended_seat[:, 0]
    assert set(ended.tolist()) <= {0, 1}


def test_four_player_poker_one_learner_three_npcs() -> None:
    """RLCard poker zeroes the mover's _cumulative_rewards: last() at each of the learner's turns (and
    at the game's end) is exactly the reward of its previous move; seats are drawn among four."""
    driver = TurnDriver(holdem, num_envs=4, layout_kwargs={"seat": "random", "training_agents": ["player_0"]})
    driver.play(150)
    check_turns(driver)
    assert [g.agents for g in driver.layout.groups] == [("player_0", "player_1", "player_2", "player_3")]
    for e, env in enumerate(driver.envs):
        by_move: dict[tuple[int, Any], list[float]] = {}
        for m in env.live_moves():
            by_move.setdefault((m.episode, m.agent), []).append(m.cumulative)
        for episode in driver.episodes(e):
            index, agent = episode[0].episode, episode[0].agent
            cumulative = by_move[(index, agent)]  # last() at each of its turns
            assert cumulative[0] == 0
            assert [s.reward for s in episode[:-1]] == cumulative[1:]
            assert episode[-1].reward == env.final_cumulative[index][agent]
            others = sum(v for a, v in env.final_cumulative[index].items() if a != agent)
            assert episode[-1].npc_reward == pytest.approx(others)
    seats = [ep[0].agent for e in range(4) for ep in driver.episodes(e)]
    assert set(seats) == {"player_0", "player_1", "player_2", "player_3"}


def fold_or_first(obs: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RLCard limit hold'em: fold (action 2) where legal, else the lowest legal action."""
    return np.where(mask[:, 2], 2, mask.argmax(axis=1))


def test_poker_hands_that_end_before_the_learner_moves_are_counted() -> None:
    """When the three NPCs fold before the big blind (the learner) acts, the hand ends without a move
    of the learner: no step is credited, the env counts it and plays the next hand."""
    seat = {"training_agents": ["player_1"]}
    driver = TurnDriver(holdem, num_envs=4, npc=fold_or_first, layout_kwargs=seat)
    driver.play(60)
    check_turns(driver)
    assert driver.no_move.sum() >= 5
    # The learner's returns in those hands (the blinds it won) are reported apart.
    assert (driver.no_move_return[driver.no_move > 0] > 0).all()
    played = sum(len(driver.episodes(e)) for e in range(4))
    resets = sum(len(env.seeds) for env in driver.envs)
    assert resets == played + driver.no_move.sum() + 4  # + the hand each env is playing now


class OneMoveGame(BaseWrapper):
    """Ends tic-tac-toe after its first move (a draw)."""

    def step(self, action: Any) -> None:
        self.env.step(action)
        raw = self.env.unwrapped
        raw.terminations = dict.fromkeys(raw.agents, True)


def test_learner_that_never_moves_is_an_error() -> None:
    env = OneMoveGame(tictactoe_v3.env())
    layout = build_turn_layout(env, "random", training_agents=["player_2"])
    turn = TurnJointEnv(env, layout, TurnBuffers.allocate(layout))
    turn.reset(seed=0)
    message = f"{MAX_NO_MOVE_EPISODES} episodes in a row ended before the learner"
    with pytest.raises(RuntimeError, match=message):
        while True:
            turn.step_npc(int(np.argmax(turn.buf.npc_mask[0][0])))


class EndWithoutDeadSteps(BaseWrapper):
    """Clears ``agents`` when the game ends instead of leaving the dead steps to its agents."""

    def step(self, action: Any) -> None:
        self.env.step(action)
        raw = self.env.unwrapped
        if all(raw.terminations.values()):
            raw.agents = []


def test_learner_leaving_without_a_dead_step_is_terminated() -> None:
    driver = TurnDriver(lambda: EndWithoutDeadSteps(connect_four_v3.env()), num_envs=2, npc=bot,
                        layout_kwargs={"training_agents": ["player_0"]})
    driver.play(60)
    check_turns(driver)
    episodes = [ep for e in range(2) for ep in driver.episodes(e)]
    assert len(episodes) >= 3
    for episode in episodes:
        assert (episode[-1].terminated, episode[-1].truncated) == (True, False)
        assert episode[-1].reward in (-1, 0, 1)
    assert any(ep[-1].reward == -1 for ep in episodes)


def test_chess_games_with_random_legal_moves() -> None:
    chess_v6 = pytest.importorskip("pettingzoo.classic.chess_v6", exc_type=ImportError)
    driver = TurnDriver(chess_v6.env, num_envs=2, layout_kwargs={"seat": "random"})
    driver.reset(seed=1)
    rng = np.random.default_rng(0)
    while sum(len(driver.episodes(e)) for e in range(2)) < 2:
        driver.step(random_legal(None, driver.buf.train_mask, rng))
    check_turns(driver)
    assert driver.buf.train_obs.shape == (2, 8, 8, 111) and driver.buf.train_mask.shape == (2, 4672)
    for e, env in enumerate(driver.envs):
        for episode in driver.episodes(e):
            final = env.final_cumulative[episode[0].episode]
            assert sum(s.reward for s in episode) == final[episode[0].agent]


# ---------------------------------------------------------------------------------------- masks in infos
class InfoMask(BaseWrapper):
    """Serves a classic env's ``observation`` entry as the observation and its mask in the infos (or, with
    ``drop``, no mask at all)."""

    def __init__(self, env: Any, drop: bool = False) -> None:
        super().__init__(env)
        self.drop = drop

    def observation_space(self, agent: Any) -> spaces.Space:
        return masked_observation_space(self.env.observation_space(agent))

    def observe(self, agent: Any) -> Any:
        obs = self.env.observe(agent)
        infos = self.env.unwrapped.infos
        if not self.drop and agent in infos:  # dead agents have left the infos
            infos[agent][MASK_KEY] = obs[MASK_KEY]
        return obs["observation"]


def test_masks_from_infos() -> None:
    driver = TurnDriver(lambda: InfoMask(connect_four_v3.env()), num_envs=2, layout_kwargs={"seat": "random"})
    driver.play(40)
    plain = TurnDriver(connect_four_v3.env, num_envs=2, layout_kwargs={"seat": "random"})
    plain.play(40)
    for e in range(2):
        assert [(s.obs.tobytes(), s.mask.tobytes(), s.reward) for s in driver.steps[e]] == [
            (s.obs.tobytes(), s.mask.tobytes(), s.reward) for s in plain.steps[e]
        ]
    assert not all(s.mask.all() for s in driver.steps[0])


def test_no_mask_allows_every_action() -> None:
    driver = TurnDriver(lambda: InfoMask(tictactoe_v3.env(), drop=True), num_envs=1, npc=first_legal,
                        layout_kwargs={"training_agents": ["player_2"]})
    driver.reset()
    assert driver.buf.train_mask.all() and driver.buf.train_obs[0, 0, 0].tolist() == [0, 1]


# ------------------------------------------------------------------------------------------- bad input
class BadMask(BaseWrapper):
    """Gives ``player_1`` a mask of another shape (``shape``) or an all-false mask (``zeros``)."""

    def __init__(self, env: Any, kind: str) -> None:
        super().__init__(env)
        self.kind = kind

    def observe(self, agent: Any) -> Any:
        obs = self.env.observe(agent)
        if agent == "player_1":
            mask = obs[MASK_KEY]
            obs = {**obs, MASK_KEY: np.append(mask, 1) if self.kind == "shape" else np.zeros_like(mask)}
        return obs


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("shape", r"the env gave agent 'player_1' an action mask of shape \(10,\); .* needs shape \(9,\)"),
        ("zeros", "the env gave agent 'player_1' an action mask that allows no action .* the env's bug"),
    ],
)
@pytest.mark.parametrize("learner", ["player_1", "player_2"])
def test_bad_masks_name_the_agent(kind: str, message: str, learner: str) -> None:
    """player_1 opens: as the learner or as an NPC, its mask is read at the first reset."""
    driver = TurnDriver(lambda: BadMask(tictactoe_v3.env(), kind), num_envs=2,
                        layout_kwargs={"training_agents": [learner]})
    with pytest.raises(ValueError, match=message):
        driver.reset()


def test_several_learners_are_refused() -> None:
    with pytest.raises(ValueError, match=(
        r"a turn-based \(AEC\) env has one learner per env and its other seats are NPCs, but the training "
        r"agents selected are \['player_1', 'player_2'\]: name one seat with training_agents=\['player_1'\]"
    )):
        build_turn_layout(tictactoe_v3.env(), "random", training_agents_pct=1.0)
    with pytest.raises(ValueError, match="seat must be one of"):
        build_turn_layout(tictactoe_v3.env(), "random", seat="left")


def test_npc_mapping_by_seat() -> None:
    env = tictactoe_v3.env()
    layout = build_turn_layout(env, {"player_1": "a", "player_2": "b"}, seat="random")
    assert [(g.agents, g.spec) for g in layout.groups] == [(("player_1",), "a"), (("player_2",), "b")]
    assert layout.row_of("player_2") == (1, 0)
    message = r"npc mapping keys \['player_1'\] drive no NPC seat .* learner plays"
    with pytest.raises(ValueError, match=message):
        build_turn_layout(env, {"player_1": "a", "player_2": "b"}, training_agents=["player_1"])
    with pytest.raises(ValueError, match=r"NPC seats \['player_2'\] match no key"):
        build_turn_layout(env, {"player_1": "a"}, seat="random")
    assert build_turn_layout(env, {"*": "a"}, training_agents=["player_1"]).row_of("player_1") is None


@pytest.mark.parametrize("action", [1.0, "1", True, np.array([1])])
def test_learner_action_must_be_an_int(action: Any) -> None:
    env = tictactoe_v3.env()
    layout = build_turn_layout(env, "random", training_agents=["player_1"])
    turn = TurnJointEnv(env, layout, TurnBuffers.allocate(layout))
    turn.reset(seed=0)
    with pytest.raises(TypeError, match=r"the learner's action .* for agent 'player_1' is a \w+, not an int"):
        turn.step(action)
    turn.step(np.int64(4))  # numpy integers are ints
    assert turn.buf.turn[0] != LEARNER
    with pytest.raises(RuntimeError, match=r"step\(\) / play\(\) play the learner's move, but NPC 'player_2' is"):
        turn.step(0)
    turn.step_npc(0)
    with pytest.raises(RuntimeError, match="step_npc\\(\\) plays an NPC's move, but the learner"):
        turn.step_npc(1)


def test_a_move_refused_midway_leaves_every_env_at_a_decision_point() -> None:
    """Envs play their moves before any advances: one refused (not an int) must not leave the envs that
    already played between their move and their next turn (the learner's next move would be taken as
    the NPC's)."""
    layout = build_turn_layout(tictactoe_v3.env(), "random", training_agents=["player_1"])
    joints = [TurnJointEnv(tictactoe_v3.env(), layout, TurnBuffers.allocate(layout)) for _ in range(2)]
    for joint in joints:
        joint.reset(seed=0)
    with pytest.raises(TypeError, match="not an int"):
        step_learners(joints, np.array([4, 1.5], dtype=object))
    assert joints[0].buf.turn[0] != LEARNER and joints[0].env.agent_selection == "player_2"
    assert joints[1].buf.turn[0] == LEARNER and joints[1].env.agent_selection == "player_1"
    step_npcs(joints[:1], [np.array([0])])
    step_learners(joints, np.array([8, 4]))  # both envs go on from where they are
    assert all(joint.buf.turn[0] != LEARNER and joint.env.agent_selection == "player_2" for joint in joints)


def test_other_envs_must_match_the_first() -> None:
    layout = build_turn_layout(tictactoe_v3.env(), "random", training_agents=["player_1"])
    with pytest.raises(ValueError, match="its possible_agents are \\['player_0', 'player_1'\\]"):
        TurnJointEnv(connect_four_v3.env(), layout, TurnBuffers.allocate(layout))


def test_action_mask_multidiscrete() -> None:
    mask = ActionMask(spaces.MultiDiscrete([2, 3]))
    out = np.zeros(5, dtype=bool)
    mask.write([1, 0, 0, 0, 1], out, "a")
    assert out.tolist() == [True, False, False, False, True]
    masks = np.array([[1, 0, 0, 1, 0], [1, 1, 0, 0, 0]], dtype=bool)
    assert mask.legal(masks).tolist() == [True, False]
    with pytest.raises(ValueError, match="agent 'b' an action mask that allows no action for some sub-"):
        mask.check(masks, ["a", "b"].__getitem__)



# ------------------------------------------------------------------------------- wrappers' own attributes
class TenfoldRewards(BaseWrapper):
    """Rewards ten times the env's, through a property."""

    @property
    def rewards(self) -> dict[Any, float]:
        return {a: 10 * r for a, r in self.env.rewards.items()}


class TenfoldRewardsFromFirstStep(BaseWrapper):
    """Rewards ten times the env's, in an attribute of its own from its first step on (as SuperSuit's
    AEC wrappers take ``agent_selection`` at their first step)."""

    def step(self, action: Any) -> None:
        self.env.step(action)
        self.rewards = {a: 10 * r for a, r in self.env.rewards.items()}


@pytest.mark.parametrize("wrapper", [TenfoldRewards, TenfoldRewardsFromFirstStep])
def test_attributes_a_wrapper_owns_are_read_through_it(wrapper: type) -> None:
    """The per-move reads skip the wrappers' __getattr__ chain only while no wrapper has an attribute of
    its own by that name."""
    plain = TurnDriver(connect_four_v3.env, num_envs=2, layout_kwargs={"seat": "random"})
    plain.play(40)
    wrapped = TurnDriver(lambda: wrapper(connect_four_v3.env()), num_envs=2, layout_kwargs={"seat": "random"})
    wrapped.play(40)
    for e in range(2):
        assert [(s.obs.tobytes(), s.action, 10 * s.reward, 10 * s.npc_reward) for s in plain.steps[e]] == [
            (s.obs.tobytes(), s.action, s.reward, s.npc_reward) for s in wrapped.steps[e]
        ]
    assert any(s.reward for s in plain.steps[0] + plain.steps[1])
