"""``npc-train``: train a policy against frozen NPCs in a PettingZoo env, configured with Hydra.

Usage (see ``configs/config.yaml`` and ``the README``)::

    npc-train                                      # simple_tag vs the NPC shipped with the package
    npc-train run=my_experiment trainer.dual_policy.enabled=true \\
        trainer.dual_policy.checkpoint_npc.uri="wandb://entity/project/model/name:v2" \\
        trainer.dual_policy.training_agents_pct=0.6 +user=dual_policy_checkpoint_example
    npc-train run=my_experiment trainer.resume=true trainer.total_timesteps=400000

A run writes ``runs/<run>/``: ``config.yaml`` (resolved), ``checkpoints/step_<n>.zip`` (atomic,
every ``trainer.checkpoint_interval`` steps, on Ctrl-C and at the end), ``final.zip`` (an SB3
model that is itself a valid NPC checkpoint), ``eval.json`` (win rate against the NPC before and
after training), ``logs/progress*.csv`` and ``tb/`` (TensorBoard), and ``wandb/`` when enabled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from npc_wrapper.backends import check_backend
from npc_wrapper.checkpoints import CheckpointError, parse_uri, sidecar_metadata
from npc_wrapper.cli.algos import ActionMaskVecEnv, algorithm_kwargs, check_policy, resolve_algorithm
from npc_wrapper.cli.callbacks import (
    CheckpointCallback,
    NPCMetricsCallback,
    atomic_save,
    atomic_write_text,
    epoch_of,
    latest_checkpoint,
    list_checkpoints,
)
from npc_wrapper.cli.common import (
    CLIError,
    TrainConfig,
    check_device,
    choose_wandb_mode,
    config_dir,
    die,
    one_line,
    register_configs,
)
from npc_wrapper.cli.envs import EnvFactory
from npc_wrapper.cli.metrics import format_summary, play_episodes
from npc_wrapper.config import DualPolicyConfig
from npc_wrapper.league import LeagueCallback, LeagueConfig, NoEpisodeEnds, check_league_venv
from npc_wrapper.workers import check_worker_split

__all__ = [
    "RunPaths",
    "train",
    "main",
    "build_vec_env",
    "evaluate_model",
    "dual_policy_config",
    "league_config",
    "compose_config",
    "check_schema",
    "explain_config_error",
]

PROG = "npc-train"
log = logging.getLogger("npc_wrapper.cli")

#: Seed offset of the evaluation envs, so evaluation episodes differ from training ones.
EVAL_SEED_OFFSET = 1_000_003


class RunPaths:
    """The files of one run directory.

    :param root: ``runs/<run>``
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.final = self.root / "final.zip"
        self.config = self.root / "config.yaml"
        self.logs = self.root / "logs"
        self.tensorboard = self.root / "tb"
        self.eval = self.root / "eval.json"
        self.wandb_id = self.root / "wandb_run_id"
        self.artifact = self.root / "wandb_artifact.json"
        self.league = self.root / "league"


# --------------------------------------------------------------------------- config
def compose_config(
    overrides: Sequence[str] = (), config_name: str = "config", extra_dirs: Sequence[str] = ()
) -> DictConfig:
    """Compose the ``npc-train`` config with Hydra's compose API (no run directory, no logging set-up).

    :param overrides: command-line style overrides (``trainer.total_timesteps=1000``)
    :param config_name: primary config file name, without ``.yaml``
    :param extra_dirs: more config directories searched before the shipped ones (``--config-dir``)
    :raises CLIError: with a one-line message on an unknown key, a bad value or a missing group option
    """
    from hydra import compose, initialize_config_dir

    register_configs()
    overrides = list(overrides)
    if extra_dirs:
        overrides.append(
            f"hydra.searchpath=[{','.join('file://' + str(Path(d).resolve()) for d in extra_dirs)}]"
        )
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides)
        OmegaConf.resolve(cfg)
    except CLIError:
        raise
    except Exception as e:
        raise CLIError(explain_config_error(e)) from e
    check_schema(cfg)
    return cfg


def check_schema(cfg: DictConfig) -> None:
    """Every key of ``cfg`` must be in the schema: ``+key=value`` overrides and config files can add
    keys that Hydra's struct mode lets through."""
    try:
        # A plain container: merging the typed nodes themselves would carry the added keys along.
        OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.to_container(cfg, resolve=False))
    except Exception as e:
        raise CLIError(explain_config_error(e)) from e


def explain_config_error(e: BaseException) -> str:
    """One line for a Hydra/OmegaConf composition error, naming the key and what to do."""
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        InterpolationResolutionError,
        ValidationError,
    )

    cause = e.__cause__ or e
    full_key = getattr(cause, "full_key", None)
    first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and full_key:
        if _in_free_mapping(str(full_key)):
            dotted = str(full_key).replace("[", ".").replace("]", "")  # the override grammar's form
            return (
                f"config key '{full_key}' is not set yet: add it with '+{dotted}=VALUE' "
                "(keys of free-form mappings such as hyperparameters or factory arguments need the '+')"
            )
        return (
            f"unknown config key '{full_key}': check its spelling ('npc-train --cfg job' prints every key "
            "and the README describes them)"
        )
    if isinstance(cause, ValidationError) and full_key:
        return f"bad value for '{full_key}': {first}"
    if isinstance(cause, InterpolationResolutionError):
        inner = cause.__cause__
        return one_line(f"{first.split(':')[0]}: {inner}" if isinstance(inner, CLIError) else str(cause))
    text = str(e)
    if "Could not find" in text:
        # Keep "Could not find 'env/nope'" and the available options; drop the search path dump.
        keep = [
            ln.strip()
            for ln in text.splitlines()
            if ln.strip() and not ln.startswith("\tprovider=") and not ln.startswith("Config search path")
        ]
        return one_line(" ".join(keep))
    return one_line(text)


def _in_free_mapping(full_key: str) -> bool:
    """Whether ``full_key`` lies under a schema node that takes any key (``trainer.hyperparameters``,
    ``env.factory``...), where a new key needs ``+``, rather than under a fixed schema."""
    from omegaconf import DictConfig as _Dict

    node: Any = OmegaConf.structured(TrainConfig)
    for part in full_key.split(".")[:-1]:
        name = part.split("[")[0]
        if not (isinstance(node, _Dict) and dataclasses.is_dataclass(node._metadata.object_type)):
            return True  # below a dict, a list or an Any node
        if name not in node.keys():  # keys(), since `in` is False for a MISSING value such as env.factory
            return False  # a misspelt parent
        node = node._get_node(name)
        if "[" in part:
            return True
    return not (isinstance(node, _Dict) and dataclasses.is_dataclass(node._metadata.object_type))


def league_config(cfg: DictConfig) -> LeagueConfig:
    """The ``trainer.league`` block, validated.

    :raises CLIError: naming the key to fix
    """
    try:
        return LeagueConfig.from_dict(cfg.trainer.league)
    except ValueError as e:
        raise CLIError(f"trainer.league: {one_line(e)}") from e


def dual_policy_config(cfg: DictConfig) -> DualPolicyConfig:
    """The validated ``trainer.dual_policy`` block."""
    try:
        return DualPolicyConfig.from_dict(cfg.trainer.dual_policy, where="trainer.dual_policy")
    except ValueError as e:
        raise CLIError(str(e)) from e


def _check_npc_uri(dp: DualPolicyConfig, where: str = "trainer.dual_policy.checkpoint_npc.uri") -> None:
    """A local NPC checkpoint must exist before anything is built (the URI parsed as the loader does).

    :param where: how the user gave the URI (a config key, ``--npc``), for the message
    """
    if not dp.enabled:
        return
    try:
        parsed = parse_uri(str(dp.checkpoint_npc.uri))
    except CheckpointError as e:
        raise CLIError(f"{where}: {one_line(e)}") from e
    if parsed.kind == "file" and not parsed.value.exists():
        raise CLIError(
            f"{where}: no checkpoint at {str(parsed.value)!r}; give an "
            "existing checkpoint file or directory (file://PATH), a wandb:// URI, 'random' or 'noop'"
        )


def _check_resumed_algorithm(cfg: DictConfig, paths: RunPaths) -> None:
    """A checkpoint continues only with the algorithm and network that wrote it (A2C would load a PPO zip
    as its own; SB3 rebuilds the stored network whatever ``trainer.policy``/``policy_kwargs`` say)."""
    if not paths.config.is_file():
        return
    try:
        stored_cfg = OmegaConf.load(paths.config)
    except Exception as e:
        raise CLIError(f"trainer.resume=true: cannot read {paths.config}: {one_line(e)}") from e
    stored = OmegaConf.select(stored_cfg, "trainer.algorithm")
    if stored is not None and resolve_algorithm(str(stored)) is not resolve_algorithm(cfg.trainer.algorithm):
        raise CLIError(
            f"trainer.resume=true: {paths.root} was trained with trainer.algorithm={stored} "
            f"({paths.config}), but this session's is {cfg.trainer.algorithm}; resume with the original "
            "trainer= (and its overrides), or start a new run=NAME"
        )
    for key in ("policy", "policy_kwargs"):
        old, new = OmegaConf.select(stored_cfg, f"trainer.{key}"), cfg.trainer[key]
        # Resolved: config.yaml was written resolved, this session's may hold interpolations.
        plain = [OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for v in (old, new)]
        if old is not None and plain[0] != plain[1]:
            raise CLIError(
                f"trainer.resume=true: {paths.root} was trained with trainer.{key}={plain[0]} "
                f"({paths.config}), but this session's is {plain[1]}; a checkpoint keeps its network: resume "
                f"with the original trainer.{key}, or start a new run=NAME"
            )


def _check_numbers(cfg: DictConfig) -> None:
    t = cfg.trainer
    for key, low in (
        ("total_timesteps", 1),
        ("num_envs", 1),
        ("num_workers", 0),
        ("checkpoint_interval", 0),
        ("keep_checkpoints", 0),
        ("eval_episodes", 0),
        ("eval_num_envs", 1),
    ):
        if t[key] < low:
            raise CLIError(f"trainer.{key} must be >= {low}, got {t[key]}")
    if not str(cfg.run).strip() or "/" in str(cfg.run):
        raise CLIError(
            f"run must be a non-empty name without '/', got {cfg.run!r} (use run_dir=PATH to place it)"
        )
    try:
        check_worker_split(t.num_envs, t.num_workers, prefix="trainer.")
    except ValueError as e:
        raise CLIError(str(e)) from e


#: SB3 logger outputs that ``trainer.log_formats`` may add (CSV and TensorBoard are always on).
_LOG_FORMATS = ("stdout", "log", "json")
_WANDB_MODES = ("online", "offline", "disabled")


def _check_options(cfg: DictConfig) -> None:
    """Values with a fixed set of choices, and the device, checked before anything is built or written."""
    bad = [f for f in cfg.trainer.log_formats if f not in _LOG_FORMATS]
    if bad:
        raise CLIError(f"trainer.log_formats: unknown format(s) {bad}; use any of {list(_LOG_FORMATS)}")
    if cfg.wandb.mode is not None and cfg.wandb.mode not in _WANDB_MODES:
        raise CLIError(
            f"wandb.mode={cfg.wandb.mode!r} is not one of {', '.join(_WANDB_MODES)} (or null: online with an "
            "API key, else offline)"
        )
    try:
        check_backend(num_workers=cfg.trainer.num_workers, prefix="trainer.", **backend_options(cfg))
    except (ValueError, ImportError) as e:
        raise CLIError(str(e)) from e
    methods = multiprocessing.get_all_start_methods()
    if cfg.trainer.start_method is not None and cfg.trainer.start_method not in methods:
        raise CLIError(
            f"trainer.start_method={cfg.trainer.start_method!r} is not a start method of this machine: "
            f"use one of {methods}, or null for the platform's default"
        )
    check_device(cfg.device)


# --------------------------------------------------------------------------- envs and evaluation
def backend_options(cfg: DictConfig) -> dict[str, Any]:
    """The ``trainer`` keys that say what the workers are, as ``make_vec_env``'s keyword arguments."""
    t = cfg.trainer
    resources = OmegaConf.to_container(t.worker_resources) or None  # empty: the backend's default
    return {"backend": t.backend, "start_method": t.start_method, "ray_address": t.ray_address,
            "worker_resources": resources}


def build_vec_env(
    cfg: DictConfig,
    env_fn: EnvFactory,
    dp: DualPolicyConfig,
    num_envs: int,
    seed: int,
    num_workers: int | None = None,
) -> Any:
    """The NPC vector env for ``cfg`` (one line of error on any failure to build it or load the NPC)."""
    import npc_wrapper as nw

    try:
        venv = nw.make_vec_env(
            env_fn,
            num_envs=num_envs,
            seed=seed,
            num_workers=cfg.trainer.num_workers if num_workers is None else num_workers,
            device=cfg.device,
            reset_when_training_agents_dead=cfg.env.reset_when_training_agents_dead,
            # The trainer's workers; other worker counts (an evaluation's in-process envs) take none of them.
            **(backend_options(cfg) if num_workers is None else {}),
            **dp.env_kwargs(),
        )
    except CLIError:
        raise
    except Exception as e:
        # Only a failure to load or fit the NPC (a CheckpointError) is the NPC's fault.
        npc = f" with the NPC {dp.checkpoint_npc.uri!r}" if isinstance(e, CheckpointError) else ""
        raise CLIError(f"cannot build env {cfg.env.name!r}{npc}: {type(e).__name__}: {one_line(e)}") from e
    if dp.enabled and not venv.npc_agents:
        # A split with no NPC would train without the checkpoint the user asked to play against.
        n = len(venv.training_agents)
        venv.close()
        if dp.training_agents is not None:
            why, fix = f"training_agents {dp.training_agents} match them all", "name fewer training_agents"
        else:
            pct = dp.training_agents_pct
            why = f"training_agents_pct={pct} gives the first floor({pct} * {n} + 0.5) = {n}"
            fix = f"use training_agents_pct <= {(n - 1) / n:.4g}" if n > 1 else "use an env with 2+ agents"
        raise CLIError(
            f"trainer.dual_policy.enabled is true, but all {n} agents of env {cfg.env.name!r} train ({why}), "
            f"so the NPC {dp.checkpoint_npc.uri!r} would play none; {fix}, or set "
            "trainer.dual_policy.enabled=false to train every agent"
        )
    return venv


def _agent_list(agents: Sequence[Any], most: int = 8) -> str:
    """``agents`` for a log line, elided in the middle beyond ``most`` (battle at map_size 45: 81 a side)."""
    names = [str(a) for a in agents]
    if len(names) <= most:
        return f"[{', '.join(names)}]"
    return f"[{', '.join(names[:3])}, ..., {', '.join(names[-2:])}]"


def evaluate_model(model: Any, venv: Any, episodes: int, deterministic: bool = False) -> dict[str, Any]:
    """Play ``episodes`` episodes of the SB3 ``model`` against the NPCs of ``venv``; the summary.

    :param venv: the NPC vector env, wrapped in :class:`ActionMaskVecEnv` for ``MaskablePPO``
    """
    state: Any = None
    masked = isinstance(venv, ActionMaskVecEnv)

    def act(obs: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
        nonlocal state
        extra = {"action_masks": venv.action_masks()} if masked else {}
        actions, state = model.predict(
            obs, state=state, episode_start=episode_start, deterministic=deterministic, **extra
        )
        return actions

    n_train = len(venv.training_agents)
    try:
        return play_episodes(act, venv, episodes, n_train).summary()
    except NoEpisodeEnds as e:  # an env without a time limit: one line, not a traceback
        raise CLIError(f"evaluation: {e} (env.factory), or set trainer.eval_episodes=0") from e


# --------------------------------------------------------------------------- logging
def wandb_mode(cfg: DictConfig) -> str:
    """``wandb.mode``, else ``WANDB_MODE``, else online with an API key and offline without one."""
    return choose_wandb_mode(cfg.wandb.mode)


def _artifact_name(run: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in run)


def _init_wandb(cfg: DictConfig, paths: RunPaths) -> Any:
    try:
        import wandb
    except ImportError as e:
        raise CLIError(
            "wandb.enabled=true needs wandb: pip install 'npc-wrapper[wandb]' (or set wandb.enabled=false)"
        ) from e
    run_id = paths.wandb_id.read_text().strip() if paths.wandb_id.is_file() else None
    mode = wandb_mode(cfg)
    try:
        run = wandb.init(
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            group=cfg.wandb.group,
            tags=list(cfg.wandb.tags),
            notes=cfg.wandb.notes,
            name=cfg.run,
            id=run_id,
            resume="allow" if run_id else None,
            dir=str(paths.root),
            config=OmegaConf.to_container(cfg, resolve=True),
            sync_tensorboard=True,
            mode=mode,
        )
    except Exception as e:
        raise CLIError(
            f"wandb.init failed in {mode} mode: {one_line(e)} (run 'wandb login', set WANDB_API_KEY, "
            "use wandb.mode=offline, or wandb.enabled=false)"
        ) from e
    atomic_write_text(paths.wandb_id, run.id)
    log.info("wandb run %s (%s mode)", run.id, mode)
    return run


def _log_wandb_model(run: Any, cfg: DictConfig, paths: RunPaths, metadata: dict[str, Any]) -> dict[str, Any]:
    import wandb

    name = _artifact_name(cfg.run)
    artifact = wandb.Artifact(
        name=name,
        type="model",
        metadata=metadata,
        description=f"npc-train {cfg.trainer.algorithm} on {cfg.env.name}, step {metadata['step']}",
    )
    artifact.add_file(str(paths.final), name="final.zip")
    run.log_artifact(artifact, aliases=["latest", f"step_{metadata['step']}"])
    entity = run.entity or cfg.wandb.entity or "<entity>"
    info = {
        "uri": f"wandb://{entity}/{run.project or cfg.wandb.project}/model/{name}:latest",
        "name": name,
        "metadata": metadata,
        "mode": wandb_mode(cfg),
    }
    atomic_write_text(paths.artifact, json.dumps(info, indent=2, default=float))
    return info


def _make_logger(cfg: DictConfig, paths: RunPaths, start_step: int) -> Any:
    from stable_baselines3.common.logger import (
        CSVOutputFormat,
        HumanOutputFormat,
        JSONOutputFormat,
        Logger,
        TensorBoardOutputFormat,
        make_output_format,
    )

    paths.logs.mkdir(parents=True, exist_ok=True)
    # SB3's file outputs truncate their files, so a resumed session (even from step 0) writes its own.
    suffix = f"_from_{start_step}" if cfg.trainer.resume else ""
    formats = [
        CSVOutputFormat(str(paths.logs / f"progress{suffix}.csv")),
        TensorBoardOutputFormat(str(paths.tensorboard)),
    ]
    for fmt in cfg.trainer.log_formats:  # checked by _check_options
        if fmt == "json":
            formats.append(JSONOutputFormat(str(paths.logs / f"progress{suffix}.json")))
        elif fmt == "log":
            formats.append(HumanOutputFormat(str(paths.logs / f"log{suffix}.txt")))
        else:
            formats.append(make_output_format(fmt, str(paths.logs)))
    return Logger(str(paths.logs), formats)


def _record_eval(logger: Any, summary: dict[str, Any], step: int) -> None:
    if not summary.get("episodes"):
        return
    for key in (
        "win_rate",
        "loss_rate",
        "draw_rate",
        "win_rate_ci_low",
        "win_rate_ci_high",
        "train_return",
        "npc_return",
        "episode_length",
        "episodes",
    ):
        logger.record(f"eval/{key}", summary[key])
    logger.record("time/total_timesteps", step)  # the x axis of the progress CSV
    logger.dump(step)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a preempted cloud job, ``kill``) interrupts training like Ctrl-C, so a checkpoint is saved."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _no_interrupts() -> Iterator[None]:
    """Hold off Ctrl-C and SIGTERM while a checkpoint is being written."""
    try:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _fmt_duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


# --------------------------------------------------------------------------- the job
def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job as configured; return a summary (paths, step, evaluations).

    :raises CLIError: on bad input, before any training
    :raises SystemExit: with status 130 after Ctrl-C or SIGTERM, once a checkpoint is saved
    """
    t0 = time.time()
    check_schema(cfg)
    _check_numbers(cfg)
    _check_options(cfg)
    paths = RunPaths(cfg.run_dir)
    resume = bool(cfg.trainer.resume)
    latest = latest_checkpoint(paths.checkpoints)
    if resume and latest is None:
        raise CLIError(
            f"trainer.resume=true but {paths.checkpoints} holds no checkpoint (step_<n>.zip) to resume from; "
            "check run=/run_dir=, or drop trainer.resume to start the run fresh"
        )
    if not resume and (list_checkpoints(paths.checkpoints) or paths.final.exists()):
        raise CLIError(
            f"{paths.root} already holds a run; pass trainer.resume=true to continue it, or choose another run=NAME"
        )
    start_episodes = 0
    resumed_meta: dict[str, Any] = {}
    if resume:
        _check_resumed_algorithm(cfg, paths)
        try:
            resumed_meta = sidecar_metadata(latest[1])
        except CheckpointError as e:
            raise CLIError(f"cannot resume from {latest[1]}: {one_line(e)}") from e
        # Checkpoints written before total_episodes was recorded lack it: the count restarts at 0.
        start_episodes = resumed_meta.get("total_episodes", 0)
        if not isinstance(start_episodes, int) or isinstance(start_episodes, bool) or start_episodes < 0:
            raise CLIError(
                f"cannot resume from {latest[1]}: its metadata's total_episodes must be a count, "
                f"got {start_episodes!r}"
            )

    env_fn = EnvFactory(
        OmegaConf.to_container(cfg.env.factory, resolve=True),
        OmegaConf.to_container(cfg.env.wrappers, resolve=True),
    )
    env_fn.check()
    dp = dual_policy_config(cfg)
    _check_npc_uri(dp)
    league_cfg = league_config(cfg)
    algo = resolve_algorithm(cfg.trainer.algorithm)
    policy = check_policy(algo, cfg.trainer.policy)
    kwargs = algorithm_kwargs(
        algo,
        OmegaConf.to_container(cfg.trainer.hyperparameters, resolve=True),
        OmegaConf.to_container(cfg.trainer.policy_kwargs, resolve=True),
    )

    venv = build_vec_env(cfg, env_fn, dp, cfg.trainer.num_envs, cfg.seed)
    eval_venv = None
    wandb_run = None
    try:
        n_train = len(venv.training_agents)
        has_npc = bool(venv.npc_agents)
        log.info(
            "env %s: %d envs x %d training agents %s; %d NPC agents %s driven by %s",
            cfg.env.name,
            venv.num_sub_envs,
            n_train,
            _agent_list(venv.training_agents),
            len(venv.npc_agents),
            _agent_list(venv.npc_agents),
            dp.checkpoint_npc.uri if has_npc else "-",
        )
        if league_cfg.enabled:
            try:
                check_league_venv(venv)
            except ValueError as e:
                raise CLIError(f"trainer.league: {one_line(e)}") from e
        train_env: Any = venv
        if algo.__name__ == "MaskablePPO":
            train_env = ActionMaskVecEnv(venv)
        try:
            if resume:
                assert latest is not None
                # The session's hyperparameters, not the checkpoint's: config.yaml records them as used.
                # (Not policy_kwargs: the network is the checkpoint's, and A2C stores its optimizer there.)
                hyper = {k: v for k, v in kwargs.items() if k != "policy_kwargs"}
                if "stats_window_size" in hyper:  # load() sets attributes; SB3 keeps this one private
                    hyper["_stats_window_size"] = hyper.pop("stats_window_size")
                model = algo.load(str(latest[1]), env=train_env, device=cfg.device, **hyper)
                log.info("resuming %s from %s (step %d)", cfg.run, latest[1], model.num_timesteps)
                if cfg.seed is not None:
                    # load() reseeds the envs and RNGs with the run's seed, so the session would replay the
                    # first session's env seeds and samples; its own seed comes from (seed, step) instead.
                    seq = np.random.SeedSequence([int(cfg.seed), int(model.num_timesteps)])
                    model.set_random_seed(int(seq.generate_state(1)[0]))
            else:
                model = algo(policy, train_env, seed=cfg.seed, device=cfg.device, verbose=0, **kwargs)
        except Exception as e:
            what = f"resume from {latest[1]}" if resume and latest else f"build {algo.__name__}"
            raise CLIError(f"cannot {what}: {type(e).__name__}: {one_line(e)}") from e
        if isinstance(train_env, ActionMaskVecEnv) and not any(
            "action_mask" in i for i in getattr(venv, "reset_infos", [])
        ):
            log.warning("MaskablePPO: the env gives no info['action_mask'] at reset; every action is allowed")

        paths.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(paths.config, OmegaConf.to_yaml(cfg, resolve=True))
        if cfg.wandb.enabled and wandb_mode(cfg) != "disabled":  # disabled: no run, id, callback or artifact
            wandb_run = _init_wandb(cfg, paths)
        start_step = int(model.num_timesteps)
        logger = _make_logger(cfg, paths, start_step)
        model.set_logger(logger)

        eval_summaries: dict[str, Any] = (
            json.loads(paths.eval.read_text()) if resume and paths.eval.is_file() else {}
        )
        do_eval = has_npc and cfg.trainer.eval_episodes > 0
        if do_eval:
            eval_venv = build_vec_env(
                cfg, env_fn, dp, cfg.trainer.eval_num_envs, cfg.seed + EVAL_SEED_OFFSET, num_workers=0
            )
            if isinstance(train_env, ActionMaskVecEnv):
                eval_venv = ActionMaskVecEnv(eval_venv)
        if do_eval and not resume:
            before = evaluate_model(
                model, eval_venv, cfg.trainer.eval_episodes, cfg.trainer.eval_deterministic
            )
            eval_summaries["before"] = {"step": 0, **before}
            # Now, not only at the end: an interrupted run's resumed session does not evaluate it again.
            atomic_write_text(paths.eval, json.dumps(eval_summaries, indent=2, default=float))
            _record_eval(logger, before, 0)
            log.info("before training, vs the NPC:\n%s", format_summary(before, "  "))

        interactive = bool(cfg.trainer.progress_bar) and sys.stdout.isatty()
        total = int(cfg.trainer.total_timesteps)
        t_learn = time.time()

        def report(step: int, s: dict[str, Any]) -> None:
            if interactive:
                return
            fps = (step - start_step) / max(time.time() - t_learn, 1e-9)
            win = f"win {s['win_rate']:.2f}  npc return {s['npc_return']:.2f}  " if has_npc else ""
            log.info(
                "step %d/%d  %strain return %.2f  length %.1f  %d steps/s",
                step,
                total,
                win,
                s["train_return"],
                s["episode_length"],
                fps,
            )

        metrics_cb = NPCMetricsCallback(
            n_train,
            has_npc,
            window=getattr(model, "_stats_window_size", 100),
            report=report,
            start_episodes=start_episodes,
        )

        def metadata(m: Any) -> dict[str, Any]:
            s = metrics_cb.last_summary
            meta: dict[str, Any] = {
                "epoch": epoch_of(m),
                "step": int(m.num_timesteps),
                "run": str(cfg.run),
                "env": str(cfg.env.name),
                "algorithm": algo.__name__,
                "npc": str(dp.checkpoint_npc.uri) if has_npc else None,
                "total_episodes": metrics_cb.total_episodes,
            }
            keys = ["train_return", "episode_length"]
            if has_npc:
                keys += ["win_rate", "loss_rate", "draw_rate", "npc_return"]
            if s.get("episodes"):
                meta.update({k: s[k] for k in keys})
            else:
                # No episode has ended in this session yet: keep the resumed checkpoint's window, so
                # rewriting its metadata (nothing left to train) drops no metric `type: top` sorts by.
                meta.update({k: resumed_meta[k] for k in keys if k in resumed_meta})
            return meta

        ckpt_cb = CheckpointCallback(
            paths.checkpoints, cfg.trainer.checkpoint_interval, cfg.trainer.keep_checkpoints, metadata
        )
        callbacks: list[Any] = [metrics_cb, ckpt_cb]
        league_cb = None
        if league_cfg.enabled:
            league_cb = LeagueCallback(
                league_cfg, venv=venv, save_dir=paths.league, device=cfg.device,
                deterministic=dp.checkpoint_npc.deterministic, resume=resume,
            )
            try:  # now rather than inside learn(): restoring a resumed league can fail
                league_cb.init_callback(model)
            except ValueError as e:
                raise CLIError(f"trainer.league: {one_line(e)}") from e
            callbacks.append(league_cb)
        if wandb_run is not None:
            from wandb.integration.sb3 import WandbCallback

            callbacks.append(WandbCallback(verbose=0))

        remaining = total - start_step
        if remaining > 0:
            log.info(
                "training %s for %d steps (%d -> %d) in %s",
                algo.__name__,
                remaining,
                start_step,
                total,
                paths.root,
            )
            try:
                with _sigterm_as_interrupt():
                    model.learn(
                        total_timesteps=remaining,
                        callback=callbacks,
                        reset_num_timesteps=not resume,
                        progress_bar=interactive,
                    )
            except KeyboardInterrupt:
                with _no_interrupts():
                    ckpt_cb.model = model
                    path = ckpt_cb.save()
                    if league_cb is not None:
                        league_cb.save_state()
                where = f"run={cfg.run}"
                if paths.root != Path("runs") / str(cfg.run):  # run_dir=PATH, or a sweep's runs/<run>/<job>
                    where += f" run_dir={paths.root}"
                print(
                    f"\n{PROG}: interrupted at step {model.num_timesteps}; saved {path}. Continue with: "
                    f"{PROG} {where} trainer.resume=true (and the same overrides)",
                    file=sys.stderr,
                    flush=True,
                )
                raise SystemExit(130) from None
        else:
            log.info(
                "%s already reached %d steps (trainer.total_timesteps=%d); nothing to train",
                cfg.run,
                start_step,
                total,
            )

        with _no_interrupts():
            ckpt_cb.model = model
            ckpt_cb.save()
        if do_eval:
            after = evaluate_model(
                model, eval_venv, cfg.trainer.eval_episodes, cfg.trainer.eval_deterministic
            )
            eval_summaries["after"] = {"step": int(model.num_timesteps), **after}
            _record_eval(logger, after, int(model.num_timesteps))
            atomic_write_text(paths.eval, json.dumps(eval_summaries, indent=2, default=float))
        final_meta = metadata(model)
        if league_cb is not None:
            final_meta["league_elo"] = league_cb.learner_elo
        # Not an earlier session's evaluation (this one ran none): it would be credited to another model.
        if eval_summaries.get("after", {}).get("step") == int(model.num_timesteps):
            final_meta.update(
                {
                    f"eval_{k}": v
                    for k, v in eval_summaries["after"].items()
                    if k != "per_npc" and not isinstance(v, dict)
                }
            )
        with _no_interrupts():
            atomic_save(model, paths.final, final_meta)
        artifact = (
            _log_wandb_model(wandb_run, cfg, paths, final_meta)
            if wandb_run is not None and cfg.wandb.log_model
            else None
        )
        logger.close()

        elapsed = time.time() - t0
        lines = [f"{PROG}: finished {cfg.run} at step {model.num_timesteps} in {_fmt_duration(elapsed)}"]
        for when in ("before", "after"):
            if when in eval_summaries:
                lines.append(f"  {when} training (step {eval_summaries[when]['step']}), vs the NPC:")
                lines.append(format_summary(eval_summaries[when], "    "))
        lines.append(
            f"  final model: {paths.final} (as the next NPC: "
            f"trainer.dual_policy.checkpoint_npc.uri=file://{paths.final})"
        )
        if artifact is not None:
            lines.append(
                f"  wandb model artifact: {artifact['uri']}"
                + (" (offline: 'wandb sync' the run first)" if artifact["mode"] == "offline" else "")
            )
        lines.append(
            f"  learning curve: npc-plot {paths.root}   TensorBoard: tensorboard --logdir {paths.tensorboard}"
        )
        print("\n".join(lines), flush=True)
        return {
            "paths": paths,
            "step": int(model.num_timesteps),
            "eval": eval_summaries,
            "artifact": artifact,
            "metadata": final_meta,
            "seconds": elapsed,
        }
    finally:
        for v in (venv, eval_venv):
            if v is not None:
                try:
                    v.close()
                except Exception as e:  # a worker killed by Ctrl-C must not hide the real outcome
                    log.debug("closing env: %s", e)
        if wandb_run is not None:
            wandb_run.finish()
            # finish() leaves TensorBoard patched (sync_tensorboard), so the next run in this process
            # (npc-train -m, train() called again) would get wandb's "several event log directories" warning.
            import wandb

            wandb.tensorboard.unpatch()


# --------------------------------------------------------------------------- entry point
def _debug() -> bool:
    return bool(os.environ.get("HYDRA_FULL_ERROR") or os.environ.get("NPC_WRAPPER_DEBUG"))


def _task(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        # Each job of a sweep gets its own run directory: runs/<run>/<job number>.
        cfg.run_dir = hc.runtime.output_dir
        cfg.run = f"{cfg.run}_{hc.job.num}"
    try:
        train(cfg)
    except CLIError as e:
        if _debug():
            raise
        die(PROG, e)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


#: Hydra flags that take a value; anything else starting with '-' is left to Hydra alone.
_VALUE_FLAGS = {"--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp"}


def _precheck(argv: Sequence[str]) -> None:
    """Compose the config once before Hydra does, so a bad override fails with one line."""
    overrides: list[str] = []
    extra_dirs: list[str] = []
    config_name = "config"
    it = iter(argv)
    for arg in it:
        flag, eq, inline = arg.partition("=")
        if flag in _VALUE_FLAGS:
            value = inline if eq else next(it, "")
            if flag in ("--config-dir", "-cd"):
                extra_dirs.append(value)
            elif flag in ("--config-name", "-cn"):
                config_name = value
            else:
                return  # a different primary config directory: leave it all to Hydra
        elif arg.startswith("-"):
            return  # --help, --cfg, --multirun...: Hydra's own behaviour
        else:
            overrides.append(arg)
    cfg = compose_config(overrides, config_name=config_name, extra_dirs=extra_dirs)
    # Before Hydra creates the output directory and anything is built.
    _check_numbers(cfg)
    _check_options(cfg)
    dual_policy_config(cfg)
    league_config(cfg)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``npc-train`` (Hydra overrides on the command line)."""
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        register_configs()
        cdir = config_dir()
        _precheck(argv)
    except CLIError as e:
        if _debug():
            raise
        die(PROG, e)
    sys.argv = [sys.argv[0] if sys.argv else PROG, *argv]
    hydra.main(version_base="1.3", config_path=str(cdir), config_name="config")(_task)()


if __name__ == "__main__":
    main()
