"""npc-train with trainer.league: a real self-play run on magent2 battle, and league input errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from magent2.environments import battle_v4

import npc_wrapper as nw
from npc_wrapper.cli import evaluate as eval_cli
from npc_wrapper.cli.train import main, train
from tests.test_cli import run_cfg
from tests.test_cli_errors import run_main

BATTLE = [
    "env=battle",
    "env.factory.map_size=12",
    "env.factory.max_cycles=20",
    "trainer.total_timesteps=192",
    "trainer.hyperparameters.n_steps=16",
    "trainer.hyperparameters.batch_size=64",
    "trainer.eval_episodes=0",
]


def test_league_run_on_battle_snapshots_into_the_pool_and_logs_ratings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    train(run_cfg(run_dir, *BATTLE, "trainer.league.enabled=true", "trainer.league.snapshot_every=64"))

    league = json.loads((run_dir / "league" / "league.json").read_text())
    snapshots = sorted(p.name for p in (run_dir / "league").glob("snapshot_*.zip"))
    assert snapshots == ["snapshot_128.zip", "snapshot_64.zip"]
    assert "snapshot@64" in json.dumps(league) and "snapshot@128" in json.dumps(league)
    with open(next((run_dir / "logs").glob("*.csv")), newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"league/elo_learner", "league/pool_size", "league/snapshots"} <= set(rows[0])
    assert max(int(float(r["league/snapshots"] or 0)) for r in rows) == 2
    assert "league_elo" in json.loads((run_dir / "final.json").read_text())

    # A snapshot is itself an NPC checkpoint for the next run.
    venv = nw.make_vec_env(
        lambda: battle_v4.parallel_env(map_size=12, max_cycles=20),
        npc=f"file://{run_dir / 'league' / 'snapshot_128.zip'}", training_agents=["red_*"],
    )
    assert venv.pools[0].members[0].name.startswith("snapshot_128")
    venv.close()

    # npc-eval --round-robin rates every checkpoint of the run against every other.
    out = tmp_path / "rr.json"
    capsys.readouterr()
    eval_cli.main([str(run_dir), "--round-robin", "--episodes", "1", "--num-envs", "2", "--json", str(out),
                   "--no-progress", "trainer.log_interval_s=0"])
    lines = [line for line in capsys.readouterr().err.splitlines() if "round robin:" in line]
    assert lines and lines[-1].startswith("npc-eval: round robin: 6/6 episodes"), lines  # 3 players, 6 pairings
    table = json.loads(out.read_text())
    # checkpoints/step_192 is final's network: it plays once, as final.
    assert set(table["players"]) == {"final", "league/snapshot_64", "league/snapshot_128"}
    # Every column of the printed table, best rated first.
    rows = table["table"]
    assert [r["player"] for r in rows] == sorted(table["players"], key=lambda n: -table["ratings"][n])
    for r in rows:
        assert r["games"] == r["wins"] + r["draws"] + r["losses"] > 0
        assert r["score"] == pytest.approx((r["wins"] + 0.5 * r["draws"]) / r["games"])
    # Each player's virtual draw against a 1200 reference anchors the fit: at the optimum the players'
    # expected scores against that reference sum to the virtual draws' 0.5 each.
    ratings = np.array(list(table["ratings"].values()))
    assert abs((1 / (1 + 10 ** ((1200 - ratings) / 400))).sum() - 3 * 0.5) < 1e-6

    # An env whose episodes never end is a one-line error, not a hang or a traceback.
    monkeypatch.setattr("npc_wrapper.evaluation.MAX_EPISODE_STEPS", 5)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        eval_cli.main([str(run_dir), "--round-robin", "--episodes", "1", "--num-envs", "1",
                       "env.factory.max_cycles=100000"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exc.value.code == 2 and len(err) == 1, err
    assert "no episode ended in the last max_steps=5 vector steps" in err[0]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.league.enabled=true", "trainer.league.window=0"], "trainer.league: "),
        (["trainer.league.enabled=true", "trainer.league.sampling=best"], "trainer.league: "),
        (["trainer.league.enabled=true", "trainer.dual_policy.enabled=false"], "trainer.league: "),
    ],
    ids=["window", "sampling", "no-npcs"],
)
def test_bad_league_config_stops_before_training(
    overrides: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    code, err = run_main(["device=cpu", "trainer.num_envs=2", f"run_dir={run_dir}", *BATTLE, *overrides], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"npc-train: error: {expected}"), err
    assert not (run_dir / "final.zip").exists()


def test_a_league_that_cannot_be_resumed_stops_with_one_line(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    argv = ["device=cpu", "trainer.num_envs=2", f"run_dir={run_dir}", *BATTLE, "trainer.league.enabled=true",
            "trainer.league.snapshot_every=64", "trainer.league.save_snapshots=false"]
    main([*argv, "trainer.total_timesteps=128"])
    code, err = run_main([*argv, "trainer.total_timesteps=256", "trainer.resume=true"], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("npc-train: error: trainer.league: cannot resume the league: ")
    assert "snapshot snapshot@64 " in err[0]
    assert "save_snapshots must stay true" in err[0]


def test_round_robin_refuses_an_npc_it_would_not_play(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        eval_cli.main([str(tmp_path), "--round-robin", "--npc", "random"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("npc-eval: error: --npc has no effect with --round-robin")
