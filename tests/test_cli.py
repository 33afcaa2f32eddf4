"""npc-train / npc-eval / npc-plot: configs, real training runs on mpe2 simple_tag, run directories.

Every run here is the real program (Hydra composition, real envs, real SB3 training, real
checkpoints), kept to a few hundred steps.
"""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf
from pettingzoo.utils import BaseParallelWrapper

import npc_wrapper as nw
from npc_wrapper.agents import agent_ranges
from npc_wrapper.cli import evaluate as eval_cli
from npc_wrapper.cli import plot as plot_cli
from npc_wrapper.cli.algos import ActionMaskVecEnv
from npc_wrapper.cli.config import DATA_DIR, compose_config, config_dir, dual_policy_config
from npc_wrapper.cli.envs import EnvFactory, pad_observations
from npc_wrapper.cli.errors import CLIError
from npc_wrapper.cli.train import train
from npc_wrapper.config import DualPolicyConfig
from tests.checkpoint_agents import save_marker_torchscript

REPO = Path(__file__).resolve().parent.parent

#: A few hundred steps of the default job: 2 envs x 3 predators, rollouts of 64 steps per slot.
SMALL = [
    "device=cpu",
    "trainer.num_envs=2",
    "trainer.total_timesteps=512",
    "trainer.hyperparameters.n_steps=64",
    "trainer.hyperparameters.batch_size=64",
    "trainer.hyperparameters.n_epochs=2",
    "trainer.checkpoint_interval=256",
    "trainer.eval_episodes=4",
    "trainer.eval_num_envs=2",
    "trainer.progress_bar=false",
]

ORIGINAL_COMMAND = [
    "run=my_experiment",
    "trainer.dual_policy.enabled=true",
    "trainer.dual_policy.checkpoint_npc.uri=wandb://my_entity/my_project/model/my_npc_policy:v1",
    "trainer.dual_policy.training_agents_pct=0.6",
    "+user=dual_policy_checkpoint_example",
]


def run_cfg(run_dir: Path, *overrides: str) -> Any:
    return compose_config([*SMALL, "run=test", f"run_dir={run_dir}", *overrides])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One short real run of the default job, shared by the tests that inspect its outputs."""
    run_dir = tmp_path_factory.mktemp("cli") / "runs" / "test"
    result = train(run_cfg(run_dir))
    return {"dir": run_dir, **result}


# --------------------------------------------------------------------------- configs
def test_default_config_is_simple_tag_against_the_shipped_npc() -> None:
    assert config_dir() == REPO / "configs"
    cfg = compose_config([])
    assert cfg.env.name == "simple_tag"
    assert cfg.env.factory._target_ == "mpe2.simple_tag_v3.parallel_env"
    dp = dual_policy_config(cfg)
    assert dp.enabled and dp.training_agents_pct == 0.75
    shipped = Path(dp.checkpoint_npc.uri)
    assert shipped == DATA_DIR / "simple_tag_npc.zip" and shipped.is_file()
    assert shipped.stat().st_size < 1_000_000  # "small"
    assert cfg.trainer.algorithm == "PPO" and cfg.trainer.policy == "MlpPolicy"
    assert cfg.run.startswith("simple_tag-adversary_0..2_") and cfg.run_dir == f"runs/{cfg.run}"
    assert not cfg.wandb.enabled


def test_package_level_names_import_in_a_fresh_interpreter() -> None:
    """npc_wrapper.cli's compose_config and its __all__ (the submodule train shares the name train)."""
    import subprocess
    import sys

    code = (
        "from npc_wrapper.cli import compose_config\n"
        "from npc_wrapper.cli import *\n"
        "import npc_wrapper.cli.config as config\n"
        "import npc_wrapper.cli.train as module\n"
        "assert compose_config is config.compose_config and callable(module.train)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_config_dir_of_an_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a source checkout the configs come from the wheel's data files (here a ``--target`` layout)."""
    from npc_wrapper.cli import config as cli_config

    site = tmp_path / "site"
    installed = site / "share" / "npc-wrapper" / "configs"
    shutil.copytree(REPO / "configs", installed)
    monkeypatch.setattr(cli_config, "PACKAGE_ROOT", site / "npc_wrapper")
    assert cli_config.config_dir() == installed
    monkeypatch.setenv("NPC_WRAPPER_CONFIG_DIR", str(tmp_path / "mine"))
    assert cli_config.config_dir() == tmp_path / "mine"
    monkeypatch.delenv("NPC_WRAPPER_CONFIG_DIR")
    shutil.rmtree(installed)
    monkeypatch.setattr(cli_config, "_installed_config_dirs", lambda: [])
    with pytest.raises(CLIError, match="NPC_WRAPPER_CONFIG_DIR"):
        cli_config.config_dir()


def test_own_env_by_config_alone(tmp_path: Path) -> None:
    """A user's env config in their own directory (``--config-dir``), naming any importable factory."""
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "my_spread.yaml").write_text(
        "name: my_spread\n"
        "factory: {_target_: mpe2.simple_spread_v3.parallel_env, N: 4, max_cycles: 10}\n"
        "npc: noop\n"
        "training_agents_pct: 0.5\n"
    )
    cfg = compose_config(["env=my_spread"], extra_dirs=[str(tmp_path)])
    assert cfg.env.factory.N == 4 and cfg.trainer.policy == "MlpPolicy" and cfg.env.wrappers == []
    env = EnvFactory(OmegaConf.to_container(cfg.env.factory), [])()
    assert len(env.possible_agents) == 4


def test_original_override_forms_work_verbatim() -> None:
    cfg = compose_config(ORIGINAL_COMMAND)
    assert cfg.run == "my_experiment" and cfg.run_dir == "runs/my_experiment"
    dp = dual_policy_config(cfg)
    assert dp.enabled
    assert dp.checkpoint_npc.uri == "wandb://my_entity/my_project/model/my_npc_policy:v1"
    assert dp.training_agents_pct == 0.6  # the command line wins over the user config's 0.5
    # The rest comes from +user=dual_policy_checkpoint_example.
    assert cfg.trainer.num_workers == 4 and cfg.trainer.total_timesteps == 10_000_000_000
    assert cfg.wandb.enabled and cfg.wandb.project == "dual_policy_training"
    # The original dual-policy feature quotes the URI for the shell; Hydra also accepts the quotes themselves.
    quoted = compose_config(
        [a.replace("uri=", 'uri="') + '"' if "uri=" in a else a for a in ORIGINAL_COMMAND]
    )
    assert quoted.trainer.dual_policy.checkpoint_npc.uri == dp.checkpoint_npc.uri


def test_user_example_is_the_original_complete_valid_example() -> None:
    raw = yaml.safe_load((REPO / "configs/user/dual_policy_checkpoint_example.yaml").read_text())
    block = raw["trainer"]["dual_policy"]
    assert block["enabled"] is True and block["training_agents_pct"] == 0.5
    assert set(block["checkpoint_npc"]) >= {"uri", "type", "range", "metric"}
    assert block["checkpoint_npc"]["uri"].startswith("wandb://")
    dp = DualPolicyConfig.from_dict(block)
    assert (dp.checkpoint_npc.type, dp.checkpoint_npc.range, dp.checkpoint_npc.metric) == (
        "specific",
        1,
        "epoch",
    )
    cfg = compose_config(["+user=dual_policy_checkpoint_example"])
    assert cfg.run == "dual_policy_checkpoint_experiment"
    assert dual_policy_config(cfg).checkpoint_npc.uri == block["checkpoint_npc"]["uri"]


ENV_CASES = {
    "simple_tag": ("mpe2", (16,)),
    "simple_spread": ("mpe2", (18,)),
    "battle": ("magent2", (13, 13, 5)),
    "pistonball": ("pettingzoo.butterfly", (24, 16, 3)),
    "mettagrid_arena": ("mettagrid", None),
    "mettagrid_hearts": ("mettagrid", None),
}


@pytest.mark.parametrize("env", sorted(ENV_CASES))
def test_env_configs_build_their_envs(env: str) -> None:
    module, obs_shape = ENV_CASES[env]
    pytest.importorskip(module)
    cfg = compose_config([f"env={env}"])
    assert (REPO / "configs/env" / f"{env}.yaml").is_file()
    assert "_target_" in cfg.env.factory
    env_fn = EnvFactory(OmegaConf.to_container(cfg.env.factory), OmegaConf.to_container(cfg.env.wrappers))
    env_fn.check()
    npc = "random" if env != "simple_tag" else cfg.trainer.dual_policy.checkpoint_npc.uri
    venv = nw.make_vec_env(
        env_fn, num_envs=1, npc=npc, training_agents_pct=cfg.env.training_agents_pct, seed=0, device="cpu"
    )
    try:
        obs = venv.reset()
        if obs_shape is not None:
            assert obs.shape[1:] == obs_shape
        assert venv.npc_agents, "every shipped env trains against NPCs by default"
        venv.step(np.stack([venv.action_space.sample() for _ in range(venv.num_envs)]))
    finally:
        venv.close()


def test_pistonball_uses_supersuit_preprocessing() -> None:
    cfg = compose_config(["env=pistonball"])
    targets = [w._target_ for w in cfg.env.wrappers]
    assert targets == ["supersuit.color_reduction_v0", "supersuit.resize_v1", "supersuit.frame_stack_v1"]
    assert cfg.trainer.policy == "MlpPolicy"  # 24x16 frames: too small for SB3's NatureCNN


def test_pistonball_observations_follow_the_ball() -> None:
    """pistonball_v6 redraws the screen its observations are cut from only when it has a render mode: the
    config sets one, so a piston's frames change as the ball and pistons move (without it they never do)."""
    pytest.importorskip("pymunk")
    cfg = compose_config(["env=pistonball"])
    env = EnvFactory(OmegaConf.to_container(cfg.env.factory), OmegaConf.to_container(cfg.env.wrappers))()
    try:
        first = {agent: obs[..., -1].copy() for agent, obs in env.reset(seed=0)[0].items()}  # the newest frame
        for _ in range(5):
            obs, *_ = env.step({agent: 2 for agent in env.agents})  # every piston up
        assert all(not np.array_equal(obs[agent][..., -1], first[agent]) for agent in obs)
    finally:
        env.close()


def test_an_env_config_sets_its_own_budget_and_the_command_line_wins() -> None:
    """battle's config is global (``# @package _global_``): its ``trainer`` keys beat config.yaml's base
    values and the trainer group's, and lose to a user config and the command line."""
    raw = yaml.safe_load((REPO / "configs/env/battle.yaml").read_text())
    budget = raw["trainer"]
    base = compose_config([]).trainer
    assert budget["total_timesteps"] != base.total_timesteps and budget["eval_episodes"] != base.eval_episodes
    cfg = compose_config(["env=battle"])
    assert cfg.env.name == "battle" and cfg.env.factory.map_size == raw["env"]["factory"]["map_size"]
    assert cfg.trainer.total_timesteps == budget["total_timesteps"]
    assert cfg.trainer.eval_episodes == budget["eval_episodes"]
    assert cfg.trainer.hyperparameters.n_steps == base.hyperparameters.n_steps  # the rest is untouched
    assert compose_config(["env=battle", "trainer=a2c"]).trainer.total_timesteps == budget["total_timesteps"]
    assert compose_config(["env=battle", "trainer.total_timesteps=1000"]).trainer.total_timesteps == 1000
    user = compose_config(["env=battle", "+user=dual_policy_checkpoint_example"])
    assert user.trainer.total_timesteps == 10_000_000_000  # the user config's, which comes after the env's


#: A few hundred steps of any shipped env config, whatever its algorithm (PPO, MaskablePPO).
FAST = [
    "device=cpu",
    "trainer.num_envs=1",
    "trainer.total_timesteps=192",
    "trainer.hyperparameters.n_steps=16",
    "trainer.hyperparameters.batch_size=16",
    "trainer.hyperparameters.n_epochs=1",
    "trainer.eval_episodes=1",
    "trainer.eval_num_envs=1",
    "trainer.progress_bar=false",
]
#: What an env config needs beyond its factory's module (imported inside the factory, or by the env).
ENV_PACKAGES = {"mettagrid_arena": "mettagrid", "mettagrid_hearts": "mettagrid", "pistonball": "pymunk",
                "chess": "chess"}
#: Shorter episodes where one would take most of the test's time (10 CNN learners, 1000-step episodes).
SHORTER = {"pistonball": ["env.factory.max_cycles=40"], "mettagrid_arena": ["env.factory.max_steps=200"]}
SHIPPED_ENVS = sorted(f.stem for f in (REPO / "configs/env").glob("*.yaml"))


@pytest.mark.parametrize("env", SHIPPED_ENVS)
def test_every_shipped_env_config_trains_and_evaluates(env: str, tmp_path: Path) -> None:
    """Each config of configs/env runs through npc-train (a few hundred steps, one evaluation episode before
    and after), the command line beating the config's own budget; skipped where its package is missing."""
    cfg = compose_config([f"env={env}", "run=test", f"run_dir={tmp_path / 'run'}", *FAST, *SHORTER.get(env, [])])
    if env in ENV_PACKAGES:  # first: a module that misses one raises gymnasium's DependencyNotInstalled
        pytest.importorskip(ENV_PACKAGES[env])
    pytest.importorskip(cfg.env.factory._target_.rpartition(".")[0])
    if cfg.trainer.algorithm == "MaskablePPO":  # the turn-based configs' trainer
        pytest.importorskip("sb3_contrib")
    assert cfg.trainer.total_timesteps == 192
    result = train(cfg)
    assert 192 <= result["step"] < 2 * 192, result["step"]  # whole rollouts (16 steps x its learners)
    assert [(when, s["episodes"]) for when, s in result["eval"].items()] == [("before", 1), ("after", 1)]
    assert (tmp_path / "run" / "final.zip").is_file()


# --------------------------------------------------------------------------- a real run
def test_run_directory_contents(trained_run: dict[str, Any]) -> None:
    run_dir: Path = trained_run["dir"]
    assert trained_run["step"] >= 512
    resolved = (run_dir / "config.yaml").read_text()
    assert "${" not in resolved and "simple_tag_npc.zip" in resolved
    ckpts = sorted((run_dir / "checkpoints").glob("step_*.zip"))
    assert len(ckpts) >= 2  # periodic ones plus the one at the end
    for ckpt in ckpts:
        meta = json.loads(ckpt.with_suffix(".json").read_text())
        assert meta["step"] == int(ckpt.stem.split("_")[1]) and meta["epoch"] >= 1
        with zipfile.ZipFile(ckpt) as z:
            assert z.testzip() is None
    assert not list(run_dir.rglob(".*.tmp*")), "no temporary checkpoint file is left behind"
    final_meta = json.loads((run_dir / "final.json").read_text())
    assert final_meta["step"] == trained_run["step"] and final_meta["epoch"] >= 1
    assert 0.0 <= final_meta["eval_win_rate"] <= 1.0 and final_meta["eval_episodes"] == 4
    evals = json.loads((run_dir / "eval.json").read_text())
    assert evals["before"]["step"] == 0 and evals["after"]["step"] == trained_run["step"]
    assert evals["before"]["episodes"] == evals["after"]["episodes"] == 4
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


def test_the_start_log_line_elides_long_agent_lists() -> None:
    assert agent_ranges(["agent_0"]) == "agent_0"
    blue = [f"blue_{i}" for i in range(81)]  # battle at map_size 45: the line listed all 162 names
    assert agent_ranges(blue) == "blue_0..80"
    odd = [f"p{i}" for i in range(0, 20, 2)]  # no two consecutive: the runs beyond 3 are counted
    assert agent_ranges(odd) == "p0+p2+p4+7 more"


@pytest.mark.parametrize(
    ("overrides", "side"),
    [
        ([], "adversary_0..2"),  # the predators
        (["trainer.dual_policy.training_agents=[agent_*]"], "agent_0"),  # the README's prey command
        (["trainer.dual_policy.enabled=false"], "all"),
        (["env=battle"], "red_0..11"),
        (["env=pistonball"], "piston_0..1"),
    ],
)
def test_default_run_names_say_which_side_trains(overrides: list[str], side: str) -> None:
    cfg = compose_config(overrides)
    name, _, time = cfg.run.rpartition("_")
    assert name == f"{cfg.env.name}-{side}" and len(time) == len("20250101-120000")
    assert cfg.run_dir == f"runs/{cfg.run}"


def test_an_env_that_cannot_be_built_for_the_run_name_is_one_line() -> None:
    with pytest.raises(CLIError, match=(
        r"^cannot build env.factory \(mpe2.simple_tag_v3.parallel_env\) to name the run after its training "
        r"agents: TypeError: .*'bogus' \(or name the run yourself: run=NAME\)$"
    )):
        compose_config(["+env.factory.bogus=1"])
    with pytest.raises(CLIError, match=r"^trainer.dual_policy.training_agents_pct is 0, so no agent would"):
        compose_config(["trainer.dual_policy.training_agents_pct=0"])


def test_a_run_name_is_safe_in_a_path_and_short(tmp_path: Path) -> None:
    # Agents named with characters a path or W&B name should not hold, none of them consecutive.
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "odd.yaml").write_text(
        "name: odd\n"
        "factory: {_target_: tests.envs.ScriptedParallelEnv, agents: ['a/1', 'b c 3', 'x*5', 'y?7', 'z:9']}\n"
        "npc: random\ntraining_agents_pct: 0.8\n"
    )
    cfg = compose_config(["env=odd"], extra_dirs=[str(tmp_path)])
    assert cfg.run.rpartition("_")[0] == "odd-a-1+b-c-3+x-5+1-more"


def test_metrics_beside_sb3s_own_are_logged(trained_run: dict[str, Any]) -> None:
    rows = read_csv(trained_run["dir"] / "logs/progress.csv")
    columns = set(rows[0])
    for key in (
        "npc/win_rate",
        "npc/loss_rate",
        "npc/draw_rate",
        "npc/train_team_return",
        "npc/npc_team_return",
        "npc/episode_length",
        "npc/episodes",
        "eval/win_rate",
        "eval/win_rate_ci_low",
        "eval/train_return",
        "rollout/ep_rew_mean",
        "time/total_timesteps",
    ):
        assert key in columns, key
    lengths = [float(r["npc/episode_length"]) for r in rows if r["npc/episode_length"]]
    assert lengths and all(x == 25.0 for x in lengths)  # simple_tag max_cycles
    rates = [
        (float(r["npc/win_rate"]), float(r["npc/loss_rate"]), float(r["npc/draw_rate"]))
        for r in rows
        if r["npc/win_rate"]
    ]
    assert rates and all(abs(sum(r) - 1.0) < 1e-9 for r in rates)


def test_final_model_is_a_valid_npc_checkpoint(trained_run: dict[str, Any]) -> None:
    final = trained_run["dir"] / "final.zip"
    # The trained predators now play as NPCs (the prey trains), through the safe loader.
    venv = nw.make_vec_env(
        lambda: EnvFactory(
            OmegaConf.to_container(compose_config([]).env.factory),
            [{"_target_": "npc_wrapper.cli.envs.pad_observations"}],
        )(),
        num_envs=2,
        npc=f"file://{final}",
        training_agents=["agent_*"],
        seed=0,
        device="cpu",
    )
    try:
        assert venv.npc_agents == ["adversary_0", "adversary_1", "adversary_2"]
        venv.reset()
        for _ in range(30):
            _, _, _, infos = venv.step(np.zeros(venv.num_envs, dtype=np.int64))
        assert venv.pools[0].members[0].name
    finally:
        venv.close()


def test_resume_continues_with_the_same_step_count(trained_run: dict[str, Any], tmp_path: Path) -> None:
    run_dir = tmp_path / "resumed"
    shutil.copytree(trained_run["dir"], run_dir)
    (run_dir / "final.zip").unlink()
    last_step = trained_run["step"]
    result = train(run_cfg(run_dir, "trainer.resume=true", "trainer.total_timesteps=1024"))
    assert result["step"] >= 1024
    # The learner continued from the checkpoint: SB3's step counter was not reset...
    rows = read_csv(run_dir / f"logs/progress_from_{last_step}.csv")
    steps = [int(float(r["time/total_timesteps"])) for r in rows if r["time/total_timesteps"]]
    assert steps and min(steps) > last_step
    # ...and the earlier session's log is kept.
    assert (run_dir / "logs/progress.csv").read_text() == (
        trained_run["dir"] / "logs/progress.csv"
    ).read_text()
    assert json.loads((run_dir / "final.json").read_text())["step"] == result["step"]
    # npc/episodes counts on from the checkpoint's episodes.
    before = json.loads(
        (trained_run["dir"] / f"checkpoints/step_{last_step}.json").read_text()
    )["total_episodes"]
    episodes = [int(float(r["npc/episodes"])) for r in rows if r.get("npc/episodes")]
    assert before > 0 and episodes and min(episodes) > before


def test_a_resumed_session_draws_its_own_seeds(
    trained_run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SB3's load() reseeds with the run's seed: without a seed of its own, a resumed session would
    replay the first session's env seeds (and sampling streams) from its start."""
    first_seeds: list[list[int]] = []
    reset = nw.NPCVecEnv.reset

    def recording_reset(self: nw.NPCVecEnv) -> Any:
        first_seeds.append(list(self._seeds) if self._seeds is not None else [])
        return reset(self)

    monkeypatch.setattr(nw.NPCVecEnv, "reset", recording_reset)
    for copy in ("a", "b"):
        run_dir = tmp_path / copy
        shutil.copytree(trained_run["dir"], run_dir)
        (run_dir / "final.zip").unlink()
        first_seeds.clear()
        train(run_cfg(run_dir, "trainer.resume=true", "trainer.total_timesteps=1024"))
        if copy == "a":
            seeds_a = first_seeds[0]  # the training envs' first reset (the evaluation comes after learn)
    run_seed = int(yaml.safe_load((trained_run["dir"] / "config.yaml").read_text())["seed"])
    assert seeds_a and seeds_a[0] != run_seed
    assert first_seeds[0] == seeds_a  # still a function of the run: the same resume gives the same seeds


def interrupted_run(run_dir: Path, hook: str, *overrides: str) -> None:
    """Run the job with a Ctrl-C in the callback's ``hook``: it must save and exit with status 130."""
    from npc_wrapper.cli.callbacks import NPCMetricsCallback

    def interrupt(self: NPCMetricsCallback) -> None:
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as m:
        m.setattr(NPCMetricsCallback, hook, interrupt)
        with pytest.raises(SystemExit, match="130"):
            train(run_cfg(run_dir, *overrides))


def test_interrupted_run_keeps_its_before_evaluation(tmp_path: Path) -> None:
    run_dir = tmp_path / "interrupted"
    interrupted_run(run_dir, "_on_rollout_end")  # Ctrl-C during the first rollout
    before = json.loads((run_dir / "eval.json").read_text())["before"]
    assert before["step"] == 0 and before["episodes"] == 4
    train(run_cfg(run_dir, "trainer.resume=true", "trainer.total_timesteps=384"))
    evals = json.loads((run_dir / "eval.json").read_text())
    assert evals["before"] == before and evals["after"]["episodes"] == 4


def test_interrupted_run_names_its_run_dir_in_the_resume_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "elsewhere"  # not runs/<run>, where run=NAME alone would look
    interrupted_run(run_dir, "_on_rollout_end", "trainer.eval_episodes=0")
    hint = f"Continue with: npc-train run=test run_dir={run_dir} trainer.resume=true"
    assert hint in capsys.readouterr().err


def test_resume_without_evaluation_does_not_credit_the_old_one_to_the_final_model(
    trained_run: dict[str, Any], tmp_path: Path
) -> None:
    run_dir = tmp_path / "no_eval"
    shutil.copytree(trained_run["dir"], run_dir)
    (run_dir / "final.zip").unlink()
    result = train(
        run_cfg(run_dir, "trainer.resume=true", "trainer.total_timesteps=1024", "trainer.eval_episodes=0")
    )
    assert json.loads((run_dir / "eval.json").read_text())["after"]["step"] == trained_run["step"]
    meta = json.loads((run_dir / "final.json").read_text())
    assert meta["step"] == result["step"] > trained_run["step"]
    assert not any(k.startswith("eval_") for k in meta), "an evaluation of an older model"


def test_resume_keeps_the_earlier_sessions_json_and_text_logs(tmp_path: Path) -> None:
    run_dir = tmp_path / "formats"
    opts = ["trainer.log_formats=[json,log]", "trainer.eval_episodes=0"]
    first = train(run_cfg(run_dir, *opts, "trainer.total_timesteps=384"))["step"]
    logs = run_dir / "logs"
    kept = {name: (logs / name).read_text() for name in ("progress.json", "log.txt")}
    assert all(kept.values())
    train(run_cfg(run_dir, *opts, "trainer.resume=true", "trainer.total_timesteps=768"))
    assert {name: (logs / name).read_text() for name in kept} == kept
    assert (logs / f"progress_from_{first}.json").read_text() and (logs / f"log_from_{first}.txt").read_text()


def test_resume_from_step_0_keeps_the_first_sessions_log(tmp_path: Path) -> None:
    run_dir = tmp_path / "step0"
    interrupted_run(run_dir, "_on_training_start", "trainer.eval_episodes=2")  # Ctrl-C before the first step
    first = (run_dir / "logs/progress.csv").read_text()
    assert "eval/win_rate" in first  # the evaluation before training
    train(run_cfg(run_dir, "trainer.resume=true", "trainer.total_timesteps=384", "trainer.eval_episodes=0"))
    assert (run_dir / "logs/progress.csv").read_text() == first
    assert read_csv(run_dir / "logs/progress_from_0.csv")


def test_resume_applies_changed_hyperparameters(trained_run: dict[str, Any], tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    run_dir = tmp_path / "new_lr"
    shutil.copytree(trained_run["dir"], run_dir)
    (run_dir / "final.zip").unlink()
    train(run_cfg(
        run_dir, "trainer.resume=true", "trainer.total_timesteps=1024", "trainer.eval_episodes=0",
        "trainer.hyperparameters.learning_rate=0.001", "trainer.hyperparameters.n_epochs=1",
        "+trainer.hyperparameters.stats_window_size=7",
    ))
    model = PPO.load(run_dir / "final.zip", device="cpu")
    assert (model.learning_rate, model.n_epochs) == (0.001, 1)  # as config.yaml now records
    assert model._stats_window_size == 7  # SB3 keeps it private: load() must be given that name
    # The network cannot change: the checkpoint's is used whatever policy_kwargs say, so it is refused.
    other_net = ["trainer.resume=true", "trainer.total_timesteps=2048", "trainer.policy_kwargs.net_arch=[32]"]
    with pytest.raises(CLIError, match=r"policy_kwargs=\{'net_arch': \[64, 64\]\}.*is \{'net_arch': \[32\]"):
        train(run_cfg(run_dir, *other_net))
    # The same network through an interpolation is not a change (config.yaml holds it resolved).
    train(run_cfg(run_dir, "trainer.resume=true", "trainer.total_timesteps=1024", "trainer.eval_episodes=0",
                  "trainer.policy_kwargs.net_arch=[${trainer.hyperparameters.n_steps},64]"))  # n_steps=64


def test_a2c_resumes_with_its_own_hyperparameters(tmp_path: Path) -> None:
    from stable_baselines3 import A2C

    run_dir = tmp_path / "a2c"
    opts = ["trainer=a2c", "trainer.hyperparameters.n_steps=8", "trainer.eval_episodes=0"]
    cfg = lambda *o: compose_config([*SMALL[:3], *SMALL[6:], *opts, "run=t", f"run_dir={run_dir}", *o])
    train(cfg("trainer.total_timesteps=48"))
    train(cfg(
        "trainer.resume=true", "trainer.total_timesteps=96", "trainer.hyperparameters.learning_rate=2e-3"
    ))
    assert A2C.load(run_dir / "final.zip", device="cpu").learning_rate == 0.002


@pytest.mark.parametrize(("metadata", "expected"), [
    ("[1]", "must hold a JSON object, got list"),
    ('{"total_episodes": "many"}', "total_episodes must be a count, got 'many'"),
])
def test_resume_refuses_unreadable_checkpoint_metadata(
    trained_run: dict[str, Any], tmp_path: Path, metadata: str, expected: str
) -> None:
    run_dir = tmp_path / "bad_meta"
    shutil.copytree(trained_run["dir"], run_dir)
    (run_dir / "final.zip").unlink()
    (run_dir / f"checkpoints/step_{trained_run['step']}.json").write_text(metadata)
    with pytest.raises(CLIError, match=f"cannot resume from .*step_{trained_run['step']}.zip: .*{expected}"):
        train(run_cfg(run_dir, "trainer.resume=true", "trainer.total_timesteps=1024"))
    assert not (run_dir / f"logs/progress_from_{trained_run['step']}.csv").exists()  # refused before training


def test_resume_when_already_done_trains_nothing(trained_run: dict[str, Any], tmp_path: Path) -> None:
    run_dir = tmp_path / "done"
    shutil.copytree(trained_run["dir"], run_dir)
    result = train(run_cfg(run_dir, "trainer.resume=true", "trainer.eval_episodes=0"))
    assert result["step"] == trained_run["step"]
    # Rewriting the checkpoint it resumed from keeps the metrics that `type: top` selects by.
    ckpt_meta = json.loads((trained_run["dir"] / f"checkpoints/step_{result['step']}.json").read_text())
    assert "win_rate" in ckpt_meta
    for path in (run_dir / f"checkpoints/step_{result['step']}.json", run_dir / "final.json"):
        meta = json.loads(path.read_text())
        assert {k: meta.get(k) for k in ckpt_meta} == ckpt_meta, path.name


def test_resume_with_another_algorithm_is_refused(trained_run: dict[str, Any], tmp_path: Path) -> None:
    run_dir = tmp_path / "other_algo"
    shutil.copytree(trained_run["dir"], run_dir)
    before = (run_dir / "config.yaml").read_bytes()
    cfg = compose_config(
        [*SMALL[:3], *SMALL[6:], "trainer=a2c", "run=test", f"run_dir={run_dir}", "trainer.resume=true"]
    )
    with pytest.raises(CLIError) as err:
        train(cfg)
    msg = str(err.value)
    assert "was trained with trainer.algorithm=PPO" in msg and "A2C" in msg and "original trainer=" in msg
    assert (run_dir / "config.yaml").read_bytes() == before  # the run's record is left as it was


# --------------------------------------------------------------------------- eval and plot
def test_npc_eval_prints_win_rate_with_ci(
    trained_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    eval_cli.main([str(trained_run["dir"]), "--episodes", "6", "--num-envs", "2", "--json", str(out)])
    text = capsys.readouterr().out
    assert "win rate" in text and "95% Wilson CI" in text and "simple_tag_npc.zip" in text
    summary = json.loads(out.read_text())
    assert summary["episodes"] == 6 and summary["policy"].endswith("final.zip")
    assert summary["win_rate_ci_low"] <= summary["win_rate"] <= summary["win_rate_ci_high"]
    assert summary["training_agents"] == ["adversary_0", "adversary_1", "adversary_2"]


def test_npc_eval_baseline_and_other_npc(
    trained_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # A random learner against the run's own final model as the NPC, with the config composed from configs/.
    eval_cli.main(
        [
            "random",
            "env=simple_tag",
            "trainer.dual_policy.training_agents_pct=0.25",
            "--npc",
            f"file://{trained_run['dir'] / 'final.zip'}",
            "--episodes",
            "4",
            "--num-envs",
            "2",
        ]
    )
    text = capsys.readouterr().out
    assert "random (adversary_0) vs NPC" in text and "over 4 episodes" in text


def test_npc_eval_npc_option_replaces_a_pool_runs_selector(
    trained_run: dict[str, Any], tmp_path: Path
) -> None:
    """A run trained against a pool (type top, range 2): --npc names one NPC, not a directory to pick from."""
    run_dir = tmp_path / "pool_run"
    shutil.copytree(trained_run["dir"], run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    npc = cfg.trainer.dual_policy.checkpoint_npc
    npc.uri, npc.type, npc.range, npc.metric = str(run_dir / "checkpoints"), "top", 2, "win_rate"
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    for uri in ("random", f"file://{run_dir / 'final.zip'}"):
        summary = eval_cli.evaluate(str(run_dir), npc=uri, episodes=2, num_envs=2)
        assert summary["npc"] == uri and summary["episodes"] == 2
    # A selector given with --npc on the command line is kept.
    summary = eval_cli.evaluate(
        str(run_dir), ["trainer.dual_policy.checkpoint_npc.type=all"], npc=str(run_dir / "checkpoints"),
        episodes=2, num_envs=2,
    )
    assert summary["episodes"] == 2


def test_npc_eval_on_a_run_takes_hydra_style_added_keys(trained_run: dict[str, Any]) -> None:
    """'+key=value', as npc-train asks for a new factory argument, also works on a run's config."""
    summary = eval_cli.evaluate(
        str(trained_run["dir"]), ["+env.factory.render_mode=null"], episodes=2, num_envs=2
    )
    assert summary["episodes"] == 2


def test_npc_eval_takes_trust_only_from_the_command_line(
    trained_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A run directory whose config.yaml grants itself trust for an NPC that runs code.
    run_dir = tmp_path / "untrusted_run"
    shutil.copytree(trained_run["dir"], run_dir)
    marker = tmp_path / "PWNED"
    payload = save_marker_torchscript(tmp_path / "npc.pt", marker)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["trainer"]["dual_policy"]["checkpoint_npc"].update({"uri": f"file://{payload}", "trusted": True})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CLIError, match="TorchScript is code") as exc:
        eval_cli.evaluate(str(run_dir), episodes=2, num_envs=1)
    assert "pass --trusted" in str(exc.value) and "checkpoint_npc.trusted" not in str(exc.value)
    assert not marker.exists()
    assert "ignoring trainer.dual_policy.checkpoint_npc.trusted=true" in capsys.readouterr().err


def _eval_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        eval_cli.main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exc.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("npc-eval: error: ")
    return err[0]


def test_npc_eval_errors_name_the_option_or_override_to_fix(
    trained_run: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = str(trained_run["dir"])
    assert "npc-eval: error: --npc: no checkpoint at '/no/such.zip'" in _eval_error(
        [run, "--npc", "/no/such.zip"], capsys
    )
    err = _eval_error([run, "trainer.total_timestep=1"], capsys)
    assert "command-line override: unknown config key 'trainer.total_timestep'" in err
    assert "config.yaml" not in err
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert "--device=cuda but CUDA is not available" in _eval_error([run, "--device", "cuda"], capsys)
    err = _eval_error([run, "--round-robin", "--episodes", "1"], capsys)
    assert "a round robin" in err and "npc-eval CHECKPOINT --npc URI" in err and "trainer.league" not in err
    monkeypatch.setattr("npc_wrapper.evaluation.MAX_EPISODE_STEPS", 20)  # an env whose episodes never end
    err = _eval_error([run, "--episodes", "1", "--num-envs", "1", "env.factory.max_cycles=1000"], capsys)
    assert "no episode ended in the last 20 vector steps (0 of 1 played): give the env a time limit" in err


def test_npc_eval_takes_overrides_after_options_and_a_plain_help(
    trained_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    run = str(trained_run["dir"])
    eval_cli.main([run, "--episodes", "2", "--num-envs", "1", "env.factory.max_cycles=5"])
    assert "over 2 episodes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        eval_cli.main(["--help"])
    out = capsys.readouterr().out
    assert "95% Wilson" in out and "%%" not in out


def test_plot_draws_learning_curve(trained_run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "curve.png"
    plot_cli.main([str(trained_run["dir"]), "-o", str(out)])
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    series = plot_cli.read_progress(trained_run["dir"])
    assert any(not np.isnan(v) for v in series["npc/win_rate"])
    # The evaluations before and after training are points of the curve, at their steps.
    evals = [(step, v) for step, v in zip(series["time/total_timesteps"], series["eval/win_rate"]) if not np.isnan(v)]
    assert [step for step, _ in evals] == [0, trained_run["step"]]


def test_plot_refuses_an_unsupported_output_suffix_in_one_line(
    trained_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        plot_cli.main([str(trained_run["dir"]), "-o", str(tmp_path / "x.bogus")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    assert "unsupported file type 'bogus'" in err[0] and ".png" in err[0] and ".pdf" in err[0]
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- variants
def test_self_play_trains_every_agent_with_one_policy(tmp_path: Path) -> None:
    run_dir = tmp_path / "selfplay"
    result = train(run_cfg(run_dir, "trainer.dual_policy.enabled=false", "trainer.total_timesteps=256"))
    rows = read_csv(run_dir / "logs/progress.csv")
    assert "npc/train_team_return" in rows[0] and "npc/win_rate" not in rows[0]
    assert result["eval"] == {}  # nothing to evaluate against
    # The self-play model fits every agent of the padded env: that is how the shipped NPC was made.
    venv = nw.make_vec_env(
        EnvFactory(
            OmegaConf.to_container(compose_config([]).env.factory),
            [{"_target_": "npc_wrapper.cli.envs.pad_observations"}],
        ),
        num_envs=1,
        npc=str(run_dir / "final.zip"),
        training_agents_pct=0.75,
        device="cpu",
    )
    venv.close()


def test_npc_pool_metrics_per_npc(trained_run: dict[str, Any], tmp_path: Path) -> None:
    run_dir = tmp_path / "pool"
    train(
        run_cfg(
            run_dir,
            f"trainer.dual_policy.checkpoint_npc.uri={trained_run['dir'] / 'checkpoints'}",
            "trainer.dual_policy.checkpoint_npc.type=all",
            "trainer.total_timesteps=384",
            "trainer.eval_episodes=0",
        )
    )
    names = [p.stem for p in (trained_run["dir"] / "checkpoints").glob("step_*.zip")]
    columns = set(read_csv(run_dir / "logs/progress.csv")[0])
    assert {f"npc/{n}/win_rate" for n in names} <= columns


@pytest.mark.parametrize("trainer", ["recurrent_ppo", "a2c"])
def test_other_algorithms(trainer: str, tmp_path: Path) -> None:
    pytest.importorskip("sb3_contrib")
    extra = ["trainer.hyperparameters.n_steps=64"] if trainer == "a2c" else SMALL[3:6]
    cfg = compose_config(
        [
            *SMALL[:3],
            *SMALL[6:],
            f"trainer={trainer}",
            *extra,
            "run=t",
            f"run_dir={tmp_path / trainer}",
            "trainer.total_timesteps=256",
            "trainer.eval_episodes=2",
        ]
    )
    result = train(cfg)
    meta = json.loads((tmp_path / trainer / "final.json").read_text())
    assert meta["algorithm"] == {"recurrent_ppo": "RecurrentPPO", "a2c": "A2C"}[trainer]
    assert result["step"] >= 256


class MaskedTag(BaseParallelWrapper):
    """Padded simple_tag whose agents may only take action 1, announced in ``info["action_mask"]``."""

    def __init__(self) -> None:
        from mpe2 import simple_tag_v3

        super().__init__(
            pad_observations(simple_tag_v3.parallel_env(max_cycles=25, continuous_actions=False))
        )

    def _mask(self, infos: dict) -> dict:
        mask = np.zeros(5, dtype=bool)
        mask[1] = True
        return {a: {**infos.get(a, {}), "action_mask": mask} for a in self.env.agents}

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple:
        obs, infos = self.env.reset(seed=seed, options=options)
        return obs, self._mask(infos)

    def step(self, actions: dict) -> tuple:
        obs, rewards, terms, truncs, infos = self.env.step(actions)
        return obs, rewards, terms, truncs, self._mask(infos)


def test_maskable_ppo_reads_action_masks_from_infos() -> None:
    pytest.importorskip("sb3_contrib")
    from sb3_contrib import MaskablePPO

    venv = ActionMaskVecEnv(
        nw.make_vec_env(MaskedTag, num_envs=2, npc="random", training_agents_pct=0.75, seed=1, device="cpu")
    )
    try:
        model = MaskablePPO("MlpPolicy", venv, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
        model.learn(64)
        assert venv.seen_mask
        assert (model.rollout_buffer.actions == 1).all()
    finally:
        venv.close()


def test_maskable_ppo_trainer_runs(tmp_path: Path) -> None:
    pytest.importorskip("sb3_contrib")
    run_dir = tmp_path / "masked"
    train(run_cfg(run_dir, "trainer=maskable_ppo", "trainer.total_timesteps=256", "trainer.eval_episodes=0"))
    assert json.loads((run_dir / "final.json").read_text())["algorithm"] == "MaskablePPO"


# --------------------------------------------------------------------------- wandb
def _wandb_records(run_file: Path) -> list[Any]:
    """The records of an offline wandb run's transaction log (LevelDB log format, protobuf records)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, pending, out = run_file.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full record, or the last fragment of one
            record = pb.Record()
            record.ParseFromString(pending + chunk)
            out.append(record)
            pending = b""
        elif kind in (2, 3):  # first / middle fragment
            pending += chunk
    return out


def test_wandb_offline_logs_metrics_and_the_model_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))  # no API key anywhere: offline by default
    monkeypatch.setenv("HOME", str(tmp_path))
    run_dir = tmp_path / "wb"
    result = train(
        run_cfg(run_dir, "wandb.enabled=true", "trainer.total_timesteps=384", "trainer.eval_episodes=2")
    )
    assert result["artifact"]["mode"] == "offline"
    assert result["artifact"]["uri"].endswith("/npc-wrapper/model/test:latest")
    import wandb

    # The process is left as found: the next run in it (npc-train -m) gets no "several event log
    # directories" warning from a TensorBoard patch left behind.
    assert wandb.patched["tensorboard"] == []
    # wandb-core, a separate process, writes the run's log: shut it down so the file is complete
    # before reading it (reading right after finish() once found no records).
    wandb.teardown()
    [run_file] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(run_file)
    kinds = {r.WhichOneof("record_type") for r in records}
    assert {"run", "config", "artifact"} <= kinds
    assert "tbrecord" in kinds  # metrics reach wandb through wandb's own SB3/TensorBoard integration
    [artifact] = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifact.type == "model" and artifact.name == "test"
    assert set(artifact.aliases) >= {"latest", f"step_{result['step']}"}
    meta = json.loads(artifact.metadata)
    assert meta["step"] == result["step"] and meta["epoch"] >= 1 and 0.0 <= meta["eval_win_rate"] <= 1.0
    assert [f.path for f in artifact.manifest.contents] == ["final.zip"]


def test_wandb_disabled_logs_no_artifact_and_prints_the_npc_plot_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("wandb")
    run_dir = tmp_path / "wbd"
    result = train(run_cfg(run_dir, "wandb.enabled=true", "wandb.mode=disabled",
                           "trainer.total_timesteps=256", "trainer.eval_episodes=2"))
    out = capsys.readouterr().out
    assert result["artifact"] is None and not (run_dir / "wandb_artifact.json").exists()
    assert not (run_dir / "wandb_run_id").exists() and not (run_dir / "wandb").exists()  # no run at all
    assert "wandb://" not in out and "wandb model artifact" not in out
    assert f"learning curve: npc-plot {run_dir} " in out


def test_env_workers(tmp_path: Path) -> None:
    """trainer.num_workers steps the envs in worker processes (the EnvFactory is pickled to them)."""
    run_dir = tmp_path / "workers"
    result = train(run_cfg(run_dir, "trainer.num_workers=2", "trainer.total_timesteps=384", "trainer.eval_episodes=2"))
    assert result["step"] >= 384 and (run_dir / "final.zip").is_file()
