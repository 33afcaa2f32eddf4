"""npc-train's bad-input messages and Ctrl-C.

Bad input must stop the program before any training with one clear line on stderr and a
non-zero exit status; Ctrl-C must save a checkpoint that a resumed run continues from.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from stable_baselines3 import PPO

from npc_wrapper.checkpoints.store import latest_checkpoint
from npc_wrapper.cli.checks import check_npc_uri
from npc_wrapper.cli.config import DATA_DIR
from npc_wrapper.cli.envs import EnvFactory
from npc_wrapper.cli.errors import CLIError
from npc_wrapper.cli.train import main, train
from npc_wrapper.config import CheckpointConfig, DualPolicyConfig
from tests.test_cli import SMALL, run_cfg

REPO = Path(__file__).resolve().parent.parent


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Run ``npc-train`` in this process; its exit status and the non-empty stderr lines."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return int(exc.value.code), err


BAD_INPUT = {
    "unknown top-level key": (["trainer.total_timestep=100"], "unknown config key 'trainer.total_timestep'"),
    "unknown nested key": (
        ["trainer.dual_policy.checkpoint_npc.url=x"],
        "unknown config key 'trainer.dual_policy.checkpoint_npc.url'",
    ),
    "unknown appended key": (["+trainer.foo=1"], "unknown config key 'trainer.foo'"),
    "bad value type": (["trainer.total_timesteps=lots"], "bad value for 'trainer.total_timesteps'"),
    "unknown env": (["env=no_such_env"], "Could not find 'env/no_such_env'"),
    "env target not importable": (
        ["env.factory._target_=no_such_package.make_env"],
        "env.factory._target_='no_such_package.make_env' cannot be imported",
    ),
    "env target attribute missing": (
        ["env.factory._target_=mpe2.simple_tag_v3.no_such_fn"],
        "has no attribute 'no_such_fn'",
    ),
    "misspelt SuperSuit wrapper": (  # supersuit's module __getattr__ raises ImportError, not AttributeError
        ["env.wrappers=[{_target_: supersuit.color_reduction_v9}]"],
        "env.wrappers[0]._target_='supersuit.color_reduction_v9' cannot be imported: module 'supersuit'",
    ),
    "missing NPC checkpoint": (
        ["trainer.dual_policy.checkpoint_npc.uri=file:///no/such/npc.zip"],
        "trainer.dual_policy.checkpoint_npc.uri: no checkpoint at '/no/such/npc.zip'",
    ),
    "enabled without uri": (
        ["trainer.dual_policy.enabled=true", "trainer.dual_policy.checkpoint_npc.uri=null"],
        "trainer.dual_policy.checkpoint_npc.uri is required when trainer.dual_policy.enabled is true",
    ),
    "bad percentage": (
        ["trainer.dual_policy.training_agents_pct=1.5"],
        "training_agents_pct must be a fraction in [0, 1]",
    ),
    "unknown hyperparameter": (
        ["+trainer.hyperparameters.learning_rat=0.1"],
        "['learning_rat'] are not arguments of PPO",
    ),
    "unknown algorithm": (["trainer.algorithm=PPOO"], "trainer.algorithm='PPOO' is not known"),
    "policy of another algorithm": (
        ["trainer.policy=MlpLstmPolicy"],
        "trainer.policy='MlpLstmPolicy' is not a policy of PPO",
    ),
    "resume with no checkpoint": (["trainer.resume=true"], "trainer.resume=true but"),
    "no training agents": (
        ["trainer.dual_policy.training_agents_pct=0"],
        "trainer.dual_policy.training_agents_pct is 0, so no agent would train",
    ),
    "enabled but no agent left for the NPC": (
        ["trainer.dual_policy.training_agents_pct=0.99"],
        (
            "trainer.dual_policy.enabled is true, but all 4 agents of env 'simple_tag' train "
            "(training_agents_pct=0.99 gives the first floor(0.99 * 4 + 0.5) = 4), so the NPC "
        ),
    ),
    "enabled but every agent named as training": (
        ["trainer.dual_policy.training_agents=[*]"],
        "(training_agents ['*'] match them all), so the NPC ",
    ),
    "NPC file URI without a path": (
        ["trainer.dual_policy.checkpoint_npc.uri=file://"],
        "trainer.dual_policy.checkpoint_npc.uri: 'file://' names no file",
    ),
    "metric without type top": (
        ["trainer.dual_policy.checkpoint_npc.metric=score"],
        "trainer.dual_policy.checkpoint_npc.metric='score' is only used by type 'top'",
    ),
    "NPC that does not fit": (
        ["trainer.dual_policy.training_agents_pct=0.25", "env.wrappers=[]"],
        "cannot build env 'simple_tag' with the NPC ",
    ),
    "AEC env through pad_observations": (
        ["env.factory._target_=mpe2.simple_tag_v3.env"],
        "env.factory._target_=mpe2.simple_tag_v3.env must return a PettingZoo ParallelEnv, got an AEC env",
    ),
    "factory returning a non-env": (
        ["env.factory._target_=builtins.dict"],
        "env.factory._target_=builtins.dict must return a PettingZoo ParallelEnv, got dict (missing",
    ),
    "hyperparameter without +": (
        ["trainer.hyperparameters.target_kl=0.02"],
        "add it with '+trainer.hyperparameters.target_kl=VALUE'",
    ),
    "factory argument without +": (["env.factory.foo=1"], "add it with '+env.factory.foo=VALUE'"),
}

#: Bad input refused before Hydra creates the run directory (and so before any file or wandb run).
EARLY = {
    "run name with a slash": (["run=a/b"], "run must be a non-empty name without '/', got 'a/b'"),
    "unknown log format": (["trainer.log_formats=[csv]"], "trainer.log_formats: unknown format(s) ['csv']"),
    "unknown wandb mode": (
        ["wandb.enabled=true", "wandb.mode=bogus"],
        "wandb.mode='bogus' is not one of online, offline, disabled",
    ),
    "num_envs not a multiple of num_workers": (
        ["trainer.num_envs=3", "trainer.num_workers=2"],
        "trainer.num_envs=3 must be a multiple of trainer.num_workers=2",
    ),
    "unknown device": (["device=tpu"], "device='tpu' is not a torch device: use auto, cpu, cuda or cuda:N"),
    "unknown start method": (
        ["trainer.num_workers=1", "trainer.start_method=bogus"],
        "trainer.start_method='bogus' is not a start method of this machine: use one of",
    ),
    "cuda without CUDA": (["device=cuda"], "device=cuda but CUDA is not available"),
    "cuda:N without CUDA": (["device=cuda:1"], "device=cuda:1 but CUDA is not available"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_stops_before_training_with_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides, expected = BAD_INPUT[case]
    run_dir = tmp_path / "run"
    code, err = run_main([*SMALL, f"run_dir={run_dir}", *overrides], capsys)
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("npc-train: error: ") and expected in err[0], err[0]
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "final.zip").exists()


@pytest.mark.parametrize("case", sorted(EARLY))
def test_bad_input_stops_before_the_run_directory_exists(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if "CUDA" in EARLY[case][1]:
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # also on a machine with a GPU
    monkeypatch.chdir(tmp_path)  # run=a/b would land in runs/a/b
    overrides, expected = EARLY[case]
    run_dir = tmp_path / "run"
    run_dir_arg = [] if case == "run name with a slash" else [f"run_dir={run_dir}"]
    code, err = run_main([*SMALL, *run_dir_arg, *overrides], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("npc-train: error: ") and expected in err[0], err[0]
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_npc_uri_is_checked_as_the_loader_parses_it(tmp_path: Path) -> None:
    (tmp_path / "sp ace").mkdir()
    shutil.copy(DATA_DIR / "simple_tag_npc.zip", tmp_path / "sp ace" / "ck.zip")

    def check(uri: str) -> None:
        check_npc_uri(DualPolicyConfig(enabled=True, checkpoint_npc=CheckpointConfig(uri=uri)))

    for form in ("file://{}", "file://localhost{}", "file:{}"):
        check(form.format(quote(str(tmp_path / "sp ace" / "ck.zip"))))  # the loader reads these
    with pytest.raises(CLIError, match=re.escape(f"no checkpoint at '{tmp_path / 'sp ace' / 'nope.zip'}'")):
        check(f"file://{quote(str(tmp_path / 'sp ace' / 'nope.zip'))}")


def test_missing_env_package_names_the_extra_that_installs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shipped env whose package is missing names its npc-wrapper extra (npc-train env=battle after
    the quickstart's '[mpe,train]' install; pistonball without pygame/pymunk)."""
    for name in [m for m in sys.modules if m.startswith("magent2.")]:  # imported by earlier tests
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "magent2", None)  # importing it raises ModuleNotFoundError
    hint = "no module named 'magent2' (pip install 'npc-wrapper[magent]'"
    with pytest.raises(CLIError, match=re.escape(hint)):
        EnvFactory({"_target_": "magent2.environments.battle_v4.parallel_env"}).check()
    # The package imports, but one of its own dependencies is missing.
    for name in [m for m in sys.modules if m.startswith("pettingzoo.butterfly")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pymunk", None)
    with pytest.raises(CLIError, match=re.escape("(pip install 'npc-wrapper[butterfly]')")):
        EnvFactory({"_target_": "pettingzoo.butterfly.pistonball_v6.parallel_env"}).check()
    with pytest.raises(CLIError, match="install the package that provides it, or fix the dotted path"):
        EnvFactory({"_target_": "no_such_package.make_env"}).check()


def test_existing_run_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints/step_100.zip").write_bytes(b"")
    code, err = run_main([*SMALL, f"run_dir={run_dir}"], capsys)
    assert code == 2 and len(err) == 1 and "already holds a run; pass trainer.resume=true" in err[0]


def test_console_script_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/train.py"), "trainer.num_env=2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "npc-train: error: unknown config key 'trainer.num_env': check its spelling "
        "('npc-train --cfg job' prints every key and the README describes them)"
    )


def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes_from_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "interrupted"
    progress = run_dir / "logs/progress.csv"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "npc_wrapper.cli.train",
            *SMALL,
            f"run_dir={run_dir}",
            "trainer.total_timesteps=10000000",
            "trainer.checkpoint_interval=0",
            "trainer.eval_episodes=0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        # A suite launched with SIGINT ignored (nohup, a background job) passes SIG_IGN on, and Python
        # then installs no KeyboardInterrupt handler: give the child the default disposition.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 120
        while not (progress.is_file() and progress.stat().st_size > 0):  # a first rollout was trained on
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "trainer.resume=true" in err
    latest = latest_checkpoint(run_dir / "checkpoints")
    assert latest is not None
    step, path = latest
    assert step > 0 and PPO.load(str(path), device="cpu").num_timesteps == step

    result = train(
        run_cfg(
            run_dir, "trainer.resume=true", f"trainer.total_timesteps={step + 384}", "trainer.eval_episodes=0"
        )
    )
    assert result["step"] >= step + 384


def test_step_timeout_stops_a_run_whose_env_hangs_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "hung.yaml").write_text(
        "name: hung\nfactory:\n  _target_: tests.hostile.HangingEnv\n  hang_at: 5\nnpc: random\n"
    )
    argv = ["--config-dir", str(tmp_path), "env=hung", "device=cpu", f"run_dir={tmp_path / 'run'}",
            "trainer.num_envs=2", "trainer.num_workers=1", "trainer.step_timeout=1", "trainer.eval_episodes=0",
            "trainer.total_timesteps=192", "trainer.hyperparameters.n_steps=32", "trainer.progress_bar=false"]
    started = time.monotonic()
    code, err = run_main(argv, capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("npc-train: error: ") and "step_timeout=1.0" in err[0], err
    assert time.monotonic() - started < 60


def test_step_timeout_without_workers_is_refused_before_training(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(["trainer.step_timeout=5", "trainer.num_workers=0"], capsys)
    assert code == 2 and err == [
        "npc-train: error: trainer.step_timeout=5.0 needs trainer.num_workers >= 1: an env stepping in this "
        "process cannot be interrupted; set trainer.num_workers, or drop trainer.step_timeout"
    ]


def test_pad_observations_refuses_an_aec_env() -> None:
    """Wrapped in a parallel wrapper, an AEC env would pass the engine's own check and crash at reset."""
    from mpe2 import simple_tag_v3

    from npc_wrapper.cli.envs import pad_observations

    with pytest.raises(TypeError, match="must return a PettingZoo ParallelEnv, got an AEC env"):
        pad_observations(simple_tag_v3.env())


def test_an_env_whose_episodes_never_end_is_a_one_line_evaluation_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("npc_wrapper.evaluation.MAX_EPISODE_STEPS", 20)  # the default 10,000 would take minutes here
    run_dir = tmp_path / "run"
    code, err = run_main([*SMALL, "run=test", f"run_dir={run_dir}", "env.factory.max_cycles=1000"], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("npc-train: error: evaluation: no episode ended in the last 20 vector steps")
    assert "trainer.eval_episodes=0" in err[0]
