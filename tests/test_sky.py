"""Scale-out: the SkyPilot task and its launcher script, checked without launching anything.

The task YAML is validated with SkyPilot's own parser when SkyPilot is installed (skipped
otherwise); the job's run script is executed with a recording ``npc-train`` on PATH, and the
overrides it would pass are composed against the real configs.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from npc_wrapper import ray_workers
from npc_wrapper.cli.config import compose_config, dual_policy_config

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "dual_policy_sky.sh"
TASK = REPO / "scripts" / "sky" / "train.yaml"
RAY_TASK = REPO / "scripts" / "sky" / "train_ray.yaml"
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
    assert proc.returncode == 0 and (
        "Usage: scripts/dual_policy_sky.sh [--dry-run] [--nodes N] [EXPERIMENT] [NPC_URI] [TIMESTEPS] "
        "[WORKERS]" in proc.stdout
    )
    assert "--nodes N" in proc.stdout and "set -euo" not in proc.stdout


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


# --------------------------------------------------------------------------- several nodes (Ray)
def test_ray_task_yaml_is_a_valid_skypilot_task() -> None:
    task = yaml.safe_load(RAY_TASK.read_text())
    assert task["num_nodes"] >= 2 and task["resources"]["accelerators"]
    assert "WANDB_API_KEY" in task["secrets"] and "WANDB_API_KEY" not in task["envs"]
    assert re.search(r"pip install -e \".*[\[,]ray[,\]]", task["setup"])  # every node can run the workers
    for extra in ("mpe", "magent", "butterfly", "sisl", "mettagrid"):
        assert re.search(rf"[\[,]{extra}[,\]]", task["setup"]), extra
    # The same job inputs as the one-node task, so the launcher can pick either.
    assert set(yaml.safe_load(TASK.read_text())["envs"]) <= set(task["envs"])
    sky = pytest.importorskip("sky")
    parsed = sky.Task.from_yaml(str(RAY_TASK))
    assert parsed.name == "npc-train-ray" and parsed.num_nodes == task["num_nodes"]


def test_nodes_picks_the_ray_task() -> None:
    proc = dry_run("--nodes=3", "exp", "wandb://e/p/model/npc:v3", "1000", "6", "trainer.num_envs=12")
    assert proc.returncode == 0, proc.stderr
    cmd = launch_command(proc)
    assert cmd[-1] == str(RAY_TASK) and cmd[cmd.index("--num-nodes") + 1] == "3"
    assert env_flags(cmd)["NUM_WORKERS"] == "6" and "Nodes: 3" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "0", "exp"], "--nodes must be a positive integer, got '0'"),
        (["--nodes", "two"], "--nodes must be a positive integer, got 'two'"),
        (["--nodes"], "--nodes needs a number of nodes"),
        (["--nodes", "2", "exp", "wandb://x", "100", "0"], "--nodes 2 needs WORKERS >= 1"),
        (["--nodes", "2", "exp", "wandb://x", "100", "2", "trainer.backend=process"],
         "--nodes 2 sets trainer.backend=ray and trainer.ray_address"),
        (["--nodes", "2", "exp", "wandb://x", "100", "2", "+trainer.ray_address=h:1"],
         "drop '+trainer.ray_address=h:1'"),
    ],
)
def test_bad_nodes_arguments_are_refused(args: list[str], message: str) -> None:
    proc = dry_run(*args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "would run" not in proc.stdout


def _recorder(path: Path, name: str) -> None:
    """An executable ``name`` in ``path`` that appends its arguments, one per line, to ``name``.log."""
    tool = path / name
    log = path / f"{name}.log"
    tool.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" >> {log}\necho ---- >> {log}\n')
    tool.chmod(0o755)


#: What the launcher passes the job for `--nodes 2 exp1 wandb://ent/proj/model/npc:v3 123456 4
#: trainer.num_envs=16` (test_nodes_picks_the_ray_task checks the launcher itself).
RAY_JOB = {"RUN": "exp1", "NPC_URI": "wandb://ent/proj/model/npc:v3", "TOTAL_TIMESTEPS": "123456",
           "NUM_WORKERS": "4", "OVERRIDES": "trainer.num_envs=16 "}


def _run_ray_task(tmp_path: Path, rank: int, ray_port: int) -> subprocess.CompletedProcess[str]:
    """The Ray task's `run:` script on node ``rank`` of 2, with recording ray, python3 and npc-train."""
    for name in ("ray", "python3", "npc-train"):
        _recorder(tmp_path, name)
    task = yaml.safe_load(RAY_TASK.read_text())
    run_env = {
        **os.environ,
        **{k: str(v) for k, v in task["envs"].items()},
        **RAY_JOB,
        "RAY_PORT": str(ray_port),
        "SKYPILOT_NODE_RANK": str(rank),
        "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.2",
        "SKYPILOT_NUM_NODES": "2",
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
    }
    return subprocess.run(["bash", "-c", task["run"]], env=run_env, capture_output=True, text=True,
                          timeout=60)


def _log(path: Path, name: str) -> list[list[str]]:
    log = path / f"{name}.log"
    if not log.exists():
        return []
    calls, call = [], []
    for line in log.read_text().splitlines():
        if line == "----":
            calls.append(call)
            call = []
        else:
            call.append(line)
    return calls


def test_the_ray_jobs_head_starts_ray_waits_for_the_nodes_and_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as free:  # a port where no Ray head listens yet
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    proc = _run_ray_task(tmp_path, 0, port)
    assert proc.returncode == 0, proc.stderr
    head = ["start", "--head", "--port", str(port), "--include-dashboard=false", "--disable-usage-stats"]
    assert _log(tmp_path, "ray") == [head]
    (python_call,) = _log(tmp_path, "python3")
    waited: list[tuple] = []
    monkeypatch.setattr(ray_workers, "wait_for_nodes", lambda *a, **kw: waited.append((a, kw)))
    exec(python_call[1], {})  # the head's wait, as it would run (python3 -c CODE)
    assert python_call[0] == "-c" and waited == [((2,), {"address": f"127.0.0.1:{port}", "timeout_s": 600})]
    (argv,) = _log(tmp_path, "npc-train")
    cfg = compose_config(argv)
    assert cfg.trainer.backend == "ray" and cfg.trainer.ray_address == f"127.0.0.1:{port}"
    assert cfg.trainer.num_workers == 4 and cfg.trainer.num_envs == 16
    assert cfg.trainer.total_timesteps == 123456 and cfg.device == "cuda"
    assert dual_policy_config(cfg).checkpoint_npc.uri == "wandb://ent/proj/model/npc:v3"


def test_the_ray_jobs_other_nodes_join_the_head_and_do_not_train(tmp_path: Path) -> None:
    with socket.socket() as head:  # the head's Ray listening
        head.bind(("127.0.0.1", 0))
        head.listen()
        port = head.getsockname()[1]
        proc = _run_ray_task(tmp_path, 1, port)
    assert proc.returncode == 0, proc.stderr
    assert _log(tmp_path, "ray") == [["start", "--address", f"127.0.0.1:{port}", "--disable-usage-stats"]]
    assert _log(tmp_path, "npc-train") == [] and _log(tmp_path, "python3") == []
