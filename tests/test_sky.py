"""Scale-out: the SkyPilot task and its launcher script, checked without launching anything.

The task YAML is validated with SkyPilot's own parser when SkyPilot is installed (skipped
otherwise); the job's run script is executed with a recording ``npc-train`` on PATH, and the
overrides it would pass are composed against the real configs.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from npc_wrapper.cli.config import compose_config, dual_policy_config

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "dual_policy_sky.sh"
TASK = REPO / "scripts" / "sky" / "train.yaml"
ORIGINAL_URI = "wandb://metta-research/dual_policy_training/model/bullm_dual_policy_against_roomba_v9:v2"


def dry_run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SKY_DRY_RUN": "1", "USER": "tester", **env},
    )


def launch_command(proc: subprocess.CompletedProcess[str]) -> list[str]:
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("dry run, would run: "))
    return shlex.split(line[len("dry run, would run: ") :])


def env_flags(cmd: list[str]) -> dict[str, str]:
    return dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "--env")


def test_task_yaml_is_a_valid_skypilot_task() -> None:
    task = yaml.safe_load(TASK.read_text())
    assert task["resources"]["accelerators"] and task["num_nodes"] == 1
    assert "WANDB_API_KEY" in task["secrets"] and "WANDB_API_KEY" not in task["envs"]
    assert "pip install -e" in task["setup"] and "npc-train" in task["run"]
    sky = pytest.importorskip("sky")
    parsed = sky.Task.from_yaml(str(TASK))
    assert parsed.name == "npc-train"


def test_defaults_are_the_seeds() -> None:
    proc = dry_run()
    assert proc.returncode == 0, proc.stderr
    cmd = launch_command(proc)
    assert cmd[:2] == ["sky", "launch"] and cmd[-1] == str(TASK)
    envs = env_flags(cmd)
    assert envs["RUN"].startswith("tester.dual_policy_sky.")
    assert envs["NPC_URI"] == ORIGINAL_URI
    assert envs["TOTAL_TIMESTEPS"] == "10000000000" and envs["NUM_WORKERS"] == "4" and envs["OVERRIDES"] == ""
    assert (
        cmd[cmd.index("--secret") + 1] == "WANDB_API_KEY"
    )  # the key's value never appears on the command line


def test_positional_arguments_and_extra_overrides() -> None:
    proc = dry_run(
        "my_experiment_name",
        "wandb://my_entity/my_project/model/my_npc:v3",
        "5000000000",
        "8",
        "env=battle",
        "trainer.dual_policy.training_agents_pct=0.6",
        SKY_ARGS="--use-spot --down",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Run name: my_experiment_name" in proc.stdout
    cmd = launch_command(proc)
    envs = env_flags(cmd)
    assert (
        envs["RUN"] == "my_experiment_name"
        and envs["NPC_URI"] == "wandb://my_entity/my_project/model/my_npc:v3"
    )
    assert envs["TOTAL_TIMESTEPS"] == "5000000000" and envs["NUM_WORKERS"] == "8"
    assert shlex.split(envs["OVERRIDES"]) == ["env=battle", "trainer.dual_policy.training_agents_pct=0.6"]
    assert (
        "--use-spot" in cmd
        and "--down" in cmd
        and cmd[cmd.index("--cluster") + 1] == "npc-my-experiment-name"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["exp", "wandb://x", "many"], "TIMESTEPS must be a positive integer, got 'many'"),
        (["exp", "wandb://x", "0"], "TIMESTEPS must be a positive integer"),
        (["exp", "wandb://x", "100", "-1"], "WORKERS must be a non-negative integer"),
        (["bad name"], "EXPERIMENT must be letters, digits"),
        (["exp", "wandb://x", "100", "2", "oops"], "extra arguments must be npc-train overrides"),
        (["--bogus"], "unknown option --bogus"),
    ],
)
def test_bad_arguments_are_refused(args: list[str], message: str) -> None:
    proc = dry_run(*args)
    assert proc.returncode == 2 and message in proc.stderr
    assert "would run" not in proc.stdout


def test_real_launch_needs_skypilot_and_a_wandb_key(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin", "USER": "tester"}
    env.pop("WANDB_API_KEY", None)
    env.pop("SKY_DRY_RUN", None)
    proc = subprocess.run(["bash", str(SCRIPT), "exp"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert ("SkyPilot is not installed" in proc.stderr) or ("WANDB_API_KEY is not set" in proc.stderr)
    assert "Starting" not in proc.stdout  # the banner only once every check passed


def test_a_malformed_npc_uri_is_refused_before_launch() -> None:
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # a python3 that imports npc_wrapper
    proc = dry_run("exp", "wandb://my_uri", PATH=path)
    assert proc.returncode == 2 and "would run" not in proc.stdout and "Starting" not in proc.stdout
    assert proc.stderr.strip() == (
        "dual_policy_sky.sh: error: NPC_URI: cannot parse 'wandb://my_uri': expected "
        "wandb://entity/project/type/name:version or wandb://entity/project/name[:version] "
        "(version is vN, an alias such as latest, or absent)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["3"], "trainer.num_envs=8 must be a multiple of trainer.num_workers=3"),
        (["8", "trainer.num_env=64"], "unknown config key 'trainer.num_env'"),
        (["8", "trainer.dual_policy.training_agents_pct=2"], "training_agents_pct must be a fraction"),
        (["8", "trainer.log_formats=[stdout,bogus]"], "trainer.log_formats: unknown format(s) ['bogus']"),
    ],
)
def test_bad_job_overrides_are_refused_before_launch(args: list[str], message: str) -> None:
    """What the job would refuse on the cluster, after provisioning it, is refused here."""
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # a python3 that imports npc_wrapper
    proc = dry_run("exp", "wandb://e/p/model/npc:v3", "1000", *args, PATH=path)
    assert proc.returncode == 2 and "would run" not in proc.stdout, proc.stdout
    assert proc.stderr.startswith("dual_policy_sky.sh: error: ") and message in proc.stderr, proc.stderr


def test_task_installs_every_env_extra() -> None:
    setup = yaml.safe_load(TASK.read_text())["setup"]
    for extra in ("mpe", "magent", "butterfly", "sisl", "mettagrid"):
        assert re.search(rf"[\[,]{extra}[,\]]", setup), extra


def test_help() -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert (
        proc.returncode == 0
        and "Usage: scripts/dual_policy_sky.sh [EXPERIMENT] [NPC_URI] [TIMESTEPS] [WORKERS]" in proc.stdout
    )


def test_the_jobs_command_composes_against_the_real_configs(tmp_path: Path) -> None:
    """Run the task's `run:` script with the launcher's envs and a recording npc-train; compose what it got."""
    cmd = launch_command(
        dry_run(
            "exp1",
            "wandb://ent/proj/model/npc:v3",
            "123456",
            "2",
            "trainer.hyperparameters.learning_rate=0.0001",
            "wandb.tags=[a,b]",
        )
    )
    envs = env_flags(cmd)
    recorder = tmp_path / "npc-train"
    recorder.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {tmp_path / "argv.txt"}\n')
    recorder.chmod(0o755)
    task = yaml.safe_load(TASK.read_text())
    run_env = {
        **os.environ,
        **{k: str(v) for k, v in task["envs"].items()},
        **envs,
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
    }
    proc = subprocess.run(
        ["bash", "-c", task["run"]], env=run_env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "argv.txt").read_text().splitlines()
    assert argv[0] == "+user=dual_policy_checkpoint_example"
    cfg = compose_config(argv)
    assert cfg.run == "exp1" and cfg.device == "cuda"
    assert cfg.trainer.total_timesteps == 123456 and cfg.trainer.num_workers == 2
    assert cfg.trainer.hyperparameters.learning_rate == 0.0001 and list(cfg.wandb.tags) == ["a", "b"]
    dp = dual_policy_config(cfg)
    assert dp.enabled and dp.checkpoint_npc.uri == "wandb://ent/proj/model/npc:v3"
    assert cfg.wandb.enabled
