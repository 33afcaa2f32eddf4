"""npc-train / npc-eval on turn-based games: the connect_four config (MaskablePPO against the shipped
bot, random seats) with the self-play league, evaluations per seat, the round robin's Elo table over
the run's checkpoints, and the per-seat and no-move lines of the summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from npc_wrapper.cli import evaluate as eval_cli
from npc_wrapper.cli.config import compose_config
from npc_wrapper.cli.errors import CLIError
from npc_wrapper.cli.train import train
from npc_wrapper.evaluation import EpisodeStats, format_summary
from tests.test_cli import run_cfg

pytest.importorskip("sb3_contrib")

CONNECT_FOUR = [
    "env=connect_four",
    "trainer.total_timesteps=256",
    "trainer.hyperparameters.n_steps=32",
    "trainer.hyperparameters.batch_size=64",
    "trainer.eval_episodes=8",
]


def test_turn_based_configs_default_to_maskable_ppo_and_random_seats() -> None:
    for env in ("connect_four", "tictactoe", "chess"):
        cfg = compose_config([f"env={env}", "run=x", "run_dir=."])
        assert (cfg.trainer.algorithm, cfg.env.seat) == ("MaskablePPO", "random")
    ppo = compose_config(["env=connect_four", "trainer=ppo", "run=x", "run_dir=."])
    assert ppo.trainer.algorithm == "PPO"  # a trainer on the command line wins
    assert compose_config(["run=x", "run_dir=."]).trainer.algorithm == "PPO"  # the default job is unchanged


def test_connect_four_league_run_and_round_robin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "c4"
    train(run_cfg(run_dir, *CONNECT_FOUR, "trainer.league.enabled=true", "trainer.league.snapshot_every=128"))
    meta = json.loads((run_dir / "final.json").read_text())
    assert meta["algorithm"] == "MaskablePPO"
    evals = json.loads((run_dir / "eval.json").read_text())
    for when in ("before", "after"):
        per_seat = evals[when]["per_seat"]
        assert set(per_seat) <= {"player_0", "player_1"} and per_seat
        assert sum(s["episodes"] for s in per_seat.values()) == evals[when]["episodes"] == 8
    snapshots = sorted(p.name for p in (run_dir / "league").glob("snapshot_*.zip"))
    assert snapshots == ["snapshot_128.zip"]

    capsys.readouterr()
    eval_cli.main([str(run_dir), "--episodes", "6", "--num-envs", "2"])
    out = capsys.readouterr().out
    assert "as player_0: win rate" in out or "as player_1: win rate" in out

    table_file = tmp_path / "rr.json"
    eval_cli.main([str(run_dir), "--round-robin", "--episodes", "2", "--num-envs", "2",
                   "--json", str(table_file)])
    table = json.loads(table_file.read_text())
    assert set(table["players"]) == {"final", "league/snapshot_128"}
    assert all(r["games"] == 4 for r in table["table"])  # 2 episodes a side, both orders


def test_training_every_agent_of_a_turn_based_game_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(CLIError, match=r"dual_policy.enabled=false trains every agent, but 'tictactoe' is a "
                                       r"turn-based game.*trainer.league.enabled=true"):
        train(run_cfg(tmp_path / "t", "env=tictactoe", "trainer.dual_policy.enabled=false"))


def test_summary_per_seat_and_hands_without_a_move() -> None:
    stats = EpisodeStats()
    for seat, outcome, ret in [("a", "win", 1.0), ("a", "loss", -1.0), ("b", "draw", 0.0)]:
        stats.add({"seat": seat, "outcome": outcome, "train_return": ret, "npc_return": -ret, "length": 3})
    stats.add_no_move({"episodes": 2, "train_return": 1.5})
    summary = stats.summary()
    assert summary["per_seat"]["a"]["wins"] == 1 and summary["per_seat"]["a"]["episodes"] == 2
    assert summary["per_seat"]["b"]["draws"] == 1
    assert (summary["episodes"], summary["no_move_episodes"], summary["no_move_return"]) == (3, 2, 1.5)
    text = format_summary(summary)
    assert "as a: win rate 0.500" in text and "as b: win rate 0.000" in text
    assert "hands without a learner move: 2 (learner return 1.50)" in text
