"""Progress while npc-train and npc-eval wait: training lines every ``trainer.log_interval_s`` seconds (even
before an episode ends), evaluation bars and lines, and torch's thread count during a run."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from npc_wrapper.cli import evaluate as eval_cli
from npc_wrapper.cli import threads as threads_module
from npc_wrapper.cli.config import compose_config
from npc_wrapper.cli.errors import CLIError
from npc_wrapper.cli.progress import EpisodeProgress, format_duration
from npc_wrapper.cli.threads import torch_threads
from npc_wrapper.cli.train import train
from tests.test_cli import run_cfg


def test_training_logs_a_line_every_interval_with_speed_and_time_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts: list[int] = []
    real = torch.set_num_threads
    monkeypatch.setattr(threads_module.torch, "set_num_threads", lambda n: (counts.append(n), real(n)))
    before = torch.get_num_threads()
    cfg = run_cfg(tmp_path / "p", "trainer.log_interval_s=0.000001")
    with caplog.at_level(logging.INFO, logger="npc_wrapper.cli"):
        result = train(cfg)
    lines = [r.getMessage() for r in caplog.records if "steps/s" in r.getMessage()]
    # One line per vector step at this interval; the first ones come before any 25-step episode ended.
    assert len(lines) >= 100
    assert lines[0].startswith("step 6/512 ") and "left" in lines[0] and "win" not in lines[0]
    assert any("win " in line and "train return" in line for line in lines[-5:])  # metrics, once any
    assert lines[-1].startswith(f"step {result['step']:,}/512 ") and "about 0s left" in lines[-1]
    # One torch thread on the CPU while the run lasted, and the caller's count back afterwards.
    assert counts == [1, before] and torch.get_num_threads() == before


def test_training_logs_no_line_before_the_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = run_cfg(tmp_path / "q", "trainer.eval_episodes=0")
    assert cfg.trainer.log_interval_s == 30
    with caplog.at_level(logging.INFO, logger="npc_wrapper.cli"):
        step = train(cfg)["step"]
    lines = [r.getMessage() for r in caplog.records if "steps/s" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"step {step:,}/512 ")  # only the closing line


def test_an_evaluation_shows_a_bar_when_forced_and_lines_without_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ["random", "env=simple_tag", "--episodes", "4", "--num-envs", "2", "device=cpu"]
    eval_cli.main([*common, "--progress"])
    out, err = capsys.readouterr()
    assert "npc-eval: evaluation" in out and "4/4" in out and "episodes/s" in out  # the tqdm.rich bar
    eval_cli.main([*common, "trainer.log_interval_s=0.000001"])  # not a terminal: lines on stderr
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("npc-eval: evaluation: ")]
    assert lines[0].startswith("npc-eval: evaluation: 0/4 episodes") and lines[0].endswith("about ? left")
    assert lines[-1].startswith("npc-eval: evaluation: 4/4 episodes") and lines[-1].endswith("about 0s left")
    assert "4/4" not in out  # no bar


def test_episode_progress_lines_estimate_the_time_left() -> None:
    lines: list[str] = []
    progress = EpisodeProgress(10, "evaluation after training", False, 60.0, lines.append)
    progress(3)
    assert not lines  # before the interval
    progress.started -= 30.0  # 30 s in, 3 of 10 played
    progress.last_line -= 60.0
    progress(3)
    assert lines == ["evaluation after training: 3/10 episodes, 30s elapsed, about 1m10s left"]
    assert format_duration(math.nan) == "?" and format_duration(7260) == "2h01m"


def test_torch_threads_default_to_one_on_the_cpu_and_a_setting_wins() -> None:
    before = torch.get_num_threads()
    with torch_threads(None, "cpu") as n:
        assert n == torch.get_num_threads() == 1
    with torch_threads(2, "cpu") as n:
        assert n == torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    for key, value in (("torch_threads", 0), ("log_interval_s", 0)):
        with pytest.raises(CLIError, match=f"trainer.{key} must be"):
            train(compose_config([f"trainer.{key}={value}", "run=x", "run_dir=/nonexistent/x"]))
