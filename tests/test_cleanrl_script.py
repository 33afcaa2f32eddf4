"""scripts/cleanrl_ppo_npc.py: the single-file CleanRL-style PPO runs and learns against the NPC."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml

import npc_wrapper as nw

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cleanrl_ppo_npc.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cleanrl_ppo_npc", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cleanrl_ppo_npc"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_every_config_field_has_a_one_line_docstring() -> None:
    script = load_script()
    docs = script._field_docs(script.Args)
    fields = [f.name for f in dataclasses.fields(script.Args)]
    assert sorted(docs) == sorted(fields)
    assert all(doc.strip() and "\n" not in doc for doc in docs.values())
    args = script.parse_args(
        ["--total-timesteps", "1000", "--no-cuda", "--target-kl", "0.02", "--npc", "random"]
    )
    assert (args.total_timesteps, args.cuda, args.target_kl, args.npc) == (1000, False, 0.02, "random")
    assert script.parse_args(["--target-kl", "None"]).target_kl is None


def test_defaults_are_npc_trains_ppo_on_the_same_job() -> None:
    # The script is documented to learn about as well as npc-train's default job: same rollout, batch,
    # epochs, learning rate and losses as configs/trainer/ppo.yaml (SB3 PPO) and configs/config.yaml.
    script = load_script()
    args = script.Args()
    repo = SCRIPT.parent.parent
    ppo = yaml.safe_load((repo / "configs/trainer/ppo.yaml").read_text())
    hp = ppo["hyperparameters"]
    trainer = yaml.safe_load((repo / "configs/config.yaml").read_text())["trainer"]
    slots = args.num_envs * 3  # simple_tag's 3 predators train
    assert (args.num_envs, args.total_timesteps) == (trainer["num_envs"], trainer["total_timesteps"])
    minibatch = slots * args.num_steps // args.num_minibatches
    assert (args.num_steps, minibatch, args.update_epochs) == (hp["n_steps"], hp["batch_size"], hp["n_epochs"])
    assert (args.learning_rate, args.anneal_lr) == (hp["learning_rate"], False)
    assert (args.gamma, args.gae_lambda, args.clip_coef) == (hp["gamma"], hp["gae_lambda"], hp["clip_range"])
    assert (args.ent_coef, args.max_grad_norm) == (hp["ent_coef"], hp["max_grad_norm"])
    assert not args.clip_vloss and args.bootstrap_truncated  # SB3: clip_range_vf=None; TimeLimit bootstrap
    assert ppo["policy_kwargs"]["net_arch"] == [64, 64] and args.torch_threads is None
    agent = script.Agent(16, 5)
    assert [m.out_features for m in agent.actor if hasattr(m, "out_features")] == [64, 64, 5]


def test_script_trains_a_few_iterations_against_the_shipped_npc(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--total-timesteps",
            "2304",
            "--num-envs",
            "2",
            "--num-steps",
            "128",
            "--update-epochs",
            "2",
            "--output-dir",
            str(tmp_path),
            "--no-cuda",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "vs NPC ['agent_0'] (" in out and "simple_tag_npc.zip" in out
    assert "768 steps, 1 torch thread(s)" in out  # one thread on the CPU, as npc-train
    assert re.search(r"first -> last iteration: win rate [\d.]+ -> [\d.]+, training-team return", out)
    iterations = re.findall(r"iteration (\d+)/3 step (\d+): win rate ([\d.]+)", out)
    assert [int(i) for i, _, _ in iterations] == [1, 2, 3]
    assert [int(s) for _, s, _ in iterations] == [768, 1536, 2304]
    [actor] = list(tmp_path.glob("simple_tag_v3__cleanrl_ppo_npc__3__*/actor.pt"))
    assert list(actor.parent.glob("events.out.tfevents.*"))

    # The saved actor is itself an NPC (TorchScript: trusted): the predators now play a random prey.
    script = load_script()
    venv = nw.make_vector_env(
        lambda: script.make_env("simple_tag_v3", 25),
        num_envs=2,
        npc=f"file://{actor}",
        training_agents=["agent_*"],
        device="cpu",
        trusted=True,
    )
    try:
        assert venv.npc_agents == ["adversary_0", "adversary_1", "adversary_2"]
        venv.reset(seed=0)
        for _ in range(5):
            venv.step(np.zeros(venv.num_envs, dtype=np.int64))
    finally:
        venv.close()


def _run_script(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--no-cuda", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_bad_npc_input_is_one_line_naming_the_scripts_own_flags(tmp_path: Path) -> None:
    from tests.checkpoint_agents import save_marker_torchscript

    proc = _run_script("--env-id", "simple_spread_v3")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (
        "--npc default is the prey shipped for simple_tag_v3" in proc.stderr
        and "--npc random" in proc.stderr
    )

    proc = _run_script("--torch-threads", "0", "--output-dir", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "cleanrl_ppo_npc.py: error: --torch-threads must be >= 1 (or None: 1 on the CPU), got 0"
    ], proc.stderr

    marker = tmp_path / "PWNED"
    payload = save_marker_torchscript(tmp_path / "npc.pt", marker)
    proc = _run_script("--npc", f"file://{payload}", "--output-dir", str(tmp_path))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("cleanrl_ppo_npc.py: error: ") and "pass --npc-trusted" in proc.stderr
    assert "checkpoint_npc.trusted" not in proc.stderr and not marker.exists()


def test_track_without_an_api_key_runs_offline(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "no_netrc"))
    proc = _run_script(
        "--track", "--total-timesteps", "768", "--num-envs", "2", "--num-steps", "128",
        "--update-epochs", "1", "--output-dir", str(tmp_path), env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_script_runs_from_a_checkout_with_its_own_package(tmp_path: Path) -> None:
    # As `python scripts/cleanrl_ppo_npc.py` from anywhere, without this checkout on PYTHONPATH (which
    # conftest sets for subprocesses): the script must import the npc_wrapper next to it, not fail or
    # pick up another installed copy.
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sys.modules['npc_wrapper'].__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--total-timesteps" in proc.stdout
    package = Path(proc.stdout.strip().splitlines()[-1]).resolve()
    assert package == SCRIPT.parent.parent / "npc_wrapper" / "__init__.py"


def test_truncation_bootstrap_adds_the_value_of_final_obs_only_to_time_limit_cuts() -> None:
    from tests.envs import ScriptedParallelEnv

    script = load_script()
    venv = nw.make_vector_env(  # a_1 dies (terminates) at step 2, a_0 is cut by the time limit at step 3
        lambda: ScriptedParallelEnv(max_steps=3, death_steps={"a_1": 2}), num_envs=2, training_agents_pct=0.67
    )
    venv.reset(seed=0)

    def value(o: np.ndarray) -> np.ndarray:
        return o.sum(axis=1) + 100.0

    seen = {"terminated": 0, "truncated": 0}
    for _ in range(3):
        _, reward, term, trunc, infos = venv.step(np.zeros(4, dtype=np.int64))
        out = script.truncation_bootstrap(reward, term, trunc, infos, value, 0.9)
        for k in range(4):
            if trunc[k] and not term[k]:
                seen["truncated"] += 1
                expected = reward[k] + 0.9 * value(infos["final_obs"][k][None])[0]
                assert out[k] == pytest.approx(expected) and out[k] != reward[k]
            else:
                seen["terminated"] += bool(term[k])
                assert out[k] == reward[k]
    assert seen == {"terminated": 2, "truncated": 2}
    venv.close()
