"""A run directory's ``config.yaml`` as untrusted input, and npc-train's checks before it builds anything
(issue #14, beyond the red team's reproducers): the code a run's config may run without ``--trusted``,
the limits of reading one, the memory estimate, and where a run cannot write.

A "run" here is a config npc-train would write (the default job, resolved) with the shipped NPC as its
``final.zip`` (an SB3 model of simple_tag's padded spaces, so it plays the predators too): npc-eval needs
no training to evaluate it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig, OmegaConf
from stable_baselines3 import PPO

from npc_wrapper.cli import evaluate as eval_cli
from npc_wrapper.cli.build import TrainingPlan, plan_training
from npc_wrapper.cli.config import DATA_DIR, RUN_CONFIG_MAX_BYTES, compose_config, read_run_config
from npc_wrapper.cli.errors import CLIError
from npc_wrapper.cli.estimate import check_memory, estimate_memory
from npc_wrapper.cli.model_eval import _earlier_evaluations
from npc_wrapper.cli.run_dir import RunPaths
from npc_wrapper.cli.train import train
from tests import hostile
from tests.test_cli import run_cfg


@pytest.fixture
def run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = compose_config(["run=fake", f"run_dir={run_dir}"])
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    shutil.copy(DATA_DIR / "simple_tag_npc.zip", run_dir / "final.zip")
    return run_dir


def edit(run: Path, **changes: object) -> None:
    """Set dotted keys of the run's config.yaml."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    for key, value in changes.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def evaluate(run: Path, *overrides: str, **kwargs: object) -> dict:
    return eval_cli.evaluate(str(run), list(overrides), episodes=1, num_envs=1, **kwargs)


def test_a_run_config_of_shipped_envs_is_evaluated_without_trust(run: Path) -> None:
    assert evaluate(run)["episodes"] == 1


def test_env_code_a_run_config_brings_needs_trusted(run: Path) -> None:
    """``tests.hostile.limited_simple_tag`` stands for any factory the shipped configs do not name."""
    edit(run, **{"env.factory._target_": "tests.hostile.limited_simple_tag"})
    hostile.BUILT.clear()
    refusal = r"names code that npc-eval would import and run: env\.factory\._target_="
    with pytest.raises(CLIError, match=refusal + r"'tests\.hostile\.limited_simple_tag'.*pass --trusted"):
        evaluate(run)
    assert hostile.BUILT == []  # refused before any env was built
    assert evaluate(run, trusted=True)["episodes"] == 1
    # A target the command line sets is the user's own.
    assert evaluate(run, "env.factory._target_=mpe2.simple_tag_v3.parallel_env")["episodes"] == 1


def test_an_npc_a_run_config_would_import_needs_trusted_unless_replaced(run: Path) -> None:
    edit(run, **{"trainer.dual_policy.checkpoint_npc.uri": "tests.hostile:fails_in_worker"})
    refusal = r"checkpoint_npc\.uri='tests\.hostile:fails_in_worker' \(a pkg\.module:callable"
    with pytest.raises(CLIError, match=refusal):
        evaluate(run)
    assert evaluate(run, npc="random")["episodes"] == 1  # --npc replaces it


def test_a_checkpoint_file_in_a_run_is_evaluated_in_the_default_config(run: Path) -> None:
    edit(run, **{"env.factory.max_cycles": 7})
    assert evaluate(run)["episode_length"] == 7
    summary = eval_cli.evaluate(str(run / "final.zip"), episodes=1, num_envs=1)
    assert summary["episode_length"] == 25  # the shipped simple_tag config's, not the run's


@pytest.mark.parametrize(
    ("tail", "match"),
    [
        ("#" + "x" * RUN_CONFIG_MAX_BYTES + "\n", rf"more than the limit of {RUN_CONFIG_MAX_BYTES}"),
        ("loop: &loop [*loop]\n", "more than 20000 values or is nested more than 64 levels"),
        ("deep: " + "[" * 100 + "]" * 100 + "\n", "more than 20000 values or is nested more than 64 levels"),
        ("note: ${oc.env:HOME}\n", r"holds the interpolation '\$\{oc\.env:HOME\}'"),
        ("trainer: [\n", "cannot read .*config.yaml: ParserError"),
    ],
    ids=["large", "recursive-alias", "deep", "interpolation", "torn"],
)
def test_a_run_config_past_the_limits_is_refused_naming_it(run: Path, tail: str, match: str) -> None:
    config = run / "config.yaml"
    config.write_text(config.read_text() + tail)
    with pytest.raises(CLIError, match=match) as exc:
        read_run_config(config)
    assert str(config) in str(exc.value) and "\n" not in str(exc.value)


def plan(*overrides: str) -> tuple[DictConfig, TrainingPlan]:
    cfg = compose_config(["run=estimate", "run_dir=/nonexistent", *overrides])
    return cfg, plan_training(cfg)


def test_the_memory_estimate_counts_the_envs_the_rollout_buffer_and_the_network() -> None:
    cfg, training = plan("trainer.num_envs=4", "trainer.eval_episodes=0")
    parts = {p.what.split(" ")[0] if p.what.startswith("trainer.") else p.what.split(",")[0]: p
             for p in estimate_memory(cfg, training)}
    network = "the network of trainer.policy=MlpPolicy with trainer.policy_kwargs={'net_arch': [64"
    assert set(parts) == {"trainer.num_envs=4", "the rollout buffer", network}
    # 4 envs x 3 predators x n_steps 128 x (16 float32 observations + an int64 action + 6 float32 scalars)
    assert parts["the rollout buffer"].nbytes == 4 * 3 * 128 * (64 + 8 + 24)
    env = training.env_fn()
    obs, act = env.observation_space("adversary_0"), env.action_space("adversary_0")
    env.close()
    real = PPO.policy_aliases["MlpPolicy"](obs, act, lambda _: 0.0, **training.kwargs["policy_kwargs"])
    assert parts[network].nbytes == 16 * sum(p.numel() for p in real.parameters())


def test_an_off_policy_estimate_counts_the_replay_buffer() -> None:
    cfg = compose_config(["run=x", "run_dir=/nonexistent", "trainer.algorithm=DQN", "trainer.num_envs=2"])
    cfg.trainer.hyperparameters = {"buffer_size": 1000}
    replay = [p for p in estimate_memory(cfg, plan_training(cfg)) if "replay buffer" in p.what]
    # 996 rows (a multiple of the 6 slots), each 2 observations, an int64 action and 3 float32 scalars
    assert [p.nbytes for p in replay] == [996 * (2 * 64 + 8 + 12)]


def test_an_estimate_above_the_free_memory_is_refused_unless_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("npc_wrapper.cli.estimate.available_memory", lambda: 1000)
    cfg, training = plan()
    with pytest.raises(CLIError, match=r"more than the 1000 B available: .*trainer\.num_envs=8.*"
                                       r"trainer\.policy_kwargs=.*trainer\.skip_memory_check=true"):
        check_memory(cfg, training)
    cfg, training = plan("trainer.skip_memory_check=true")
    check_memory(cfg, training)


def test_train_from_code_checks_the_run_dir_is_writable_first() -> None:
    with pytest.raises(CLIError, match=r"run_dir=/proc/nope/run: cannot write in /proc/nope/run"):
        train(run_cfg(Path("/proc/nope/run")))


@pytest.mark.parametrize("content", ["[1, 2]", '{"before": 3}', "{"])
def test_unreadable_earlier_evaluations_are_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    paths = RunPaths(tmp_path)
    paths.eval.write_text(content)
    with caplog.at_level(logging.WARNING, logger="npc_wrapper.cli"):
        assert _earlier_evaluations(paths) == {}
    assert f"ignoring {paths.eval}" in caplog.text


def test_a_run_config_cannot_raise_the_npc_checkpoint_read_limit(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Like trust, the NPC checkpoint's read limit comes from the command line only: a hostile config.yaml
    could otherwise ask the loader for gigabytes. A tiny limit makes it observable: applied, the shipped
    NPC cannot be read."""
    key = "trainer.dual_policy.checkpoint_npc.max_checkpoint_bytes"
    edit(run, **{key: 1000})
    assert evaluate(run)["episodes"] == 1
    assert f"ignoring {key}=1000 from the run's config.yaml" in capsys.readouterr().err
    with pytest.raises(CLIError, match="1000"):
        evaluate(run, f"{key}=1000")
