"""``npc-eval``: play a trained policy against an NPC for N episodes; print the win rate with a 95% CI.

Usage::

    npc-eval runs/my_run                        # its final.zip vs the run's own NPC, 100 episodes
    npc-eval runs/my_run/checkpoints/step_50000.zip --npc file://runs/other/final.zip --episodes 400
    npc-eval random env=simple_tag              # baseline: a random learner, config from configs/
    npc-eval runs/my_run env.factory.max_cycles=50 trainer.dual_policy.training_agents_pct=0.5
    npc-eval runs/my_battle_run --round-robin --episodes 10   # every checkpoint of the run vs every other

The policy is loaded with the same safe loader as NPC checkpoints (nothing that runs code from a
checkpoint unless ``--trusted``), so anything that can be an NPC can be evaluated: SB3 ``.zip``,
TorchScript (with ``--trusted``), ``wandb://`` artifacts, ``random``, ``noop``. Only ``--trusted``
grants trust: a ``checkpoint_npc.trusted`` in the run's ``config.yaml`` or an override is ignored.

A run directory given as the policy is evaluated in its own ``config.yaml`` (read within size and
expansion limits); a checkpoint file, in the default config and the overrides, never in a
``config.yaml`` near it. A run's config is code where it names env factories or wrappers that no
shipped env config names, a ``pkg.module:callable`` NPC or a ``checkpoint_npc.policy_class``: those
are imported and called only with ``--trusted``; without it the run directory is refused, naming them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from npc_wrapper.agents import agent_ranges
from npc_wrapper.checkpoints.uri import parse_uri
from npc_wrapper.cli.build import build_vec_env, env_factory
from npc_wrapper.cli.checks import check_device, check_npc_uri, check_writable_dir
from npc_wrapper.cli.config import (
    compose_config,
    dual_policy_config,
    explain_config_error,
    read_run_config,
    register_configs,
    shipped_env_npcs,
    shipped_env_targets,
)
from npc_wrapper.cli.errors import CLIError, die, one_line, with_trust_flag, writing
from npc_wrapper.cli.progress import EpisodeProgress, on_terminal
from npc_wrapper.cli.run_dir import find_run_config, resolve_policy_path
from npc_wrapper.cli.schema import TrainConfig
from npc_wrapper.cli.threads import torch_threads
from npc_wrapper.cli.video import open_video_env
from npc_wrapper.config import CheckpointConfig, DualPolicyConfig
from npc_wrapper.errors import CheckpointError, NoEpisodeEnds, TrustRequiredError
from npc_wrapper.evaluation import format_summary, play_episodes, policy_actor
from npc_wrapper.league import round_robin
from npc_wrapper.npcs.policies import NPCPolicy
from npc_wrapper.npcs.resolve import as_npc_policy

__all__ = ["main", "evaluate", "round_robin_run"]

PROG = "npc-eval"
#: Config groups: an override that selects one means the config is composed from configs/.
_GROUPS = ("env", "trainer", "user")
#: ``checkpoint_npc`` keys that say how the configured NPC is selected and read; ``--npc`` resets them.
_NPC_SELECTOR_KEYS = ("type", "range", "metric", "weights", "policy_class", "policy_kwargs")
_NPC_DEFAULTS = CheckpointConfig()
#: The read limit of the NPC checkpoint: like trust, only the command line may raise it.
_LIMIT_KEY = "trainer.dual_policy.checkpoint_npc.max_checkpoint_bytes"


def _load_config(policy: str, overrides: Sequence[str], trusted: bool, config_npc: bool) -> DictConfig:
    """The config ``policy`` is evaluated in: a run directory's own ``config.yaml`` (whose code needs
    ``trusted``), else the default config; then the ``overrides``.

    :param config_npc: whether the NPC comes from the config (no ``--npc``, no round robin)
    """
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise CLIError(f"overrides must look like key=value, got {bad}")
    run_config = find_run_config(policy)
    selects_group = any(o.lstrip("+~").split("=", 1)[0] in _GROUPS for o in overrides)
    if run_config is None or selects_group:
        return compose_config(list(overrides) + ["run=eval", "run_dir=."])
    register_configs()
    stored = read_run_config(run_config)
    if not trusted:
        code = _code_in_run_config(stored, overrides, config_npc)
        if code:
            raise CLIError(
                f"{run_config} names code that npc-eval would import and run: {'; '.join(code)}; pass "
                "--trusted if you trust this run directory (a run's config.yaml is code), or evaluate its "
                "final.zip in a shipped env config (npc-eval RUN/final.zip env=NAME)"
            )
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), stored)
    except Exception as e:
        raise CLIError(f"{run_config}: {explain_config_error(e)}") from e
    try:
        if overrides:
            # '+key=value' (Hydra's form for a new key, which npc-train asks for) adds the key here too.
            dotlist = [o.lstrip("+") for o in overrides]
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    except Exception as e:
        raise CLIError(f"command-line override: {explain_config_error(e)}") from e
    return cfg  # type: ignore[return-value]


def _code_in_run_config(stored: DictConfig, overrides: Sequence[str], config_npc: bool) -> list[str]:
    """What a run's ``config.yaml`` names that npc-eval would import and call: env factories and wrappers
    that no shipped env config names, and (``config_npc``) a ``pkg.module:callable`` NPC or a
    ``checkpoint_npc.policy_class``. What an override replaces is the user's own and not listed."""
    given = [o.lstrip("+~").split("=", 1)[0].replace("[", ".").replace("]", "") for o in overrides]

    def replaced(key: str) -> bool:
        return any(key == g or key.startswith(g + ".") for g in given)

    data = OmegaConf.to_container(stored, resolve=False)
    env = data.get("env") if isinstance(data, dict) else None
    env = env if isinstance(env, dict) else {}
    wrappers = env.get("wrappers") if isinstance(env.get("wrappers"), list) else []
    shipped = shipped_env_targets()
    found = []
    nodes = [("env.factory", env.get("factory")), *((f"env.wrappers.{i}", w) for i, w in enumerate(wrappers))]
    for key, node in nodes:
        target = node.get("_target_") if isinstance(node, dict) else None
        if target is not None and target not in shipped and not replaced(f"{key}._target_"):
            found.append(f"{key}._target_={target!r} (not an env of the shipped configs)")
    if config_npc:
        prefix = "trainer.dual_policy.checkpoint_npc"
        uri, policy_class = (OmegaConf.select(stored, f"{prefix}.{k}") for k in ("uri", "policy_class"))
        shipped_code = uri in shipped_env_npcs()  # such as the connect-four bot
        if isinstance(uri, str) and not replaced(f"{prefix}.uri") and _imports(uri) and not shipped_code:
            found.append(f"{prefix}.uri={uri!r} (a pkg.module:callable NPC is imported and called)")
        if policy_class is not None and not replaced(f"{prefix}.policy_class"):
            found.append(f"{prefix}.policy_class={policy_class!r} (imported and built)")
    return found


def _imports(uri: str) -> bool:
    """Whether the NPC URI ``uri`` names a Python callable to import (``pkg.module:callable``)."""
    try:
        return parse_uri(uri).kind == "import"
    except CheckpointError:
        return False  # loading the NPC reports what is wrong with it


def _trust_advice(msg: str, cause: BaseException | None) -> str:
    """The loader's trust advice names config keys that npc-eval ignores: name ``--trusted`` instead."""
    return with_trust_flag(msg, "--trusted") if isinstance(cause, TrustRequiredError) else msg


def evaluate(
    policy: str,
    overrides: Sequence[str] = (),
    npc: str | None = None,
    episodes: int = 100,
    num_envs: int = 8,
    seed: int = 12345,
    deterministic: bool = False,
    trusted: bool = False,
    device: str | None = None,
    progress: bool | None = None,
    video: int = 0,
    video_dir: Path | None = None,
) -> dict[str, Any]:
    """Play ``policy`` (as the training agents) against the configured NPC; the episode summary.

    :param policy: a run directory, a checkpoint path or URI, ``random`` or ``noop``
    :param overrides: config overrides (``key=value``); group selections (``env=...``) compose from configs/
    :param npc: the NPC's URI (default: the run's ``trainer.dual_policy.checkpoint_npc.uri``)
    :param episodes: episodes to play
    :param num_envs: parallel envs
    :param seed: seed of the envs and both policies
    :param deterministic: the evaluated policy acts greedily
    :param trusted: allow checkpoint formats that run code (for the policy and the NPC); the only
        source of trust: the config's ``checkpoint_npc.trusted`` is ignored
    :param device: where the policies run (default: the config's ``device``)
    :param progress: show a progress bar (``None``: on a terminal; without one, a line on stderr every
        ``trainer.log_interval_s`` seconds)
    :param video: also record this many episodes, in an env of their own, to an mp4 file (0: none)
    :param video_dir: where the video goes (default: the run directory's ``videos/`` for a run directory,
        else ``videos/``)
    """
    if episodes < 1 or num_envs < 1 or video < 0:
        raise CLIError(
            f"--episodes and --num-envs must be >= 1 and --video >= 0, got {episodes}, {num_envs} and {video}"
        )
    cfg, dp = _evaluation_config(policy, overrides, npc, trusted, device)
    env_fn = env_factory(cfg)
    if video:
        run_config = find_run_config(policy)
        default_dir = run_config.parent / "videos" if run_config is not None else Path("videos")
        video_dir = default_dir if video_dir is None else video_dir
        check_writable_dir(video_dir, f"--video-dir {video_dir}")
    with torch_threads(cfg.trainer.torch_threads, cfg.device), ExitStack() as envs:
        try:
            # The video env first: an env that cannot be recorded is refused before anything is played.
            video_env = open_video_env(cfg, env_fn, dp, "--video", seed=seed) if video else None
            if video_env is not None:
                envs.callback(video_env.close)
            venv = build_vec_env(cfg, env_fn, dp, num_envs, seed, num_workers=0)
        except CLIError as e:
            raise CLIError(_trust_advice(str(e), e.__cause__)) from e.__cause__
        envs.callback(venv.close)
        target = resolve_policy_path(policy)
        try:
            learner = as_npc_policy(
                target,
                venv.observation_space,
                venv.action_space,
                device=cfg.device,
                deterministic=deterministic,
                trusted=trusted,
            )
        except Exception as e:
            msg = f"cannot load the policy {target!r}: {type(e).__name__}: {one_line(e)}"
            raise CLIError(_trust_advice(msg, e)) from e
        bar = on_terminal() if progress is None else progress
        shown = EpisodeProgress(episodes, f"{PROG}: evaluation", bar, cfg.trainer.log_interval_s, _to_stderr)
        try:
            summary = _play(learner, venv, episodes, seed, shown)
        finally:
            shown.close()
        summary.update(
            {
                "policy": target,
                "npc": str(dp.checkpoint_npc.uri),
                "env": str(cfg.env.name),
                "training_agents": [str(a) for a in venv.training_agents],
                "npc_agents": [str(a) for a in venv.npc_agents],
            }
        )
        if video_env is not None and video_dir is not None:
            path = video_dir / f"{_file_stem(target)}_seed{seed}.mp4"
            def play(v: Any, n: int, observe: Callable[[int], None]) -> None:
                _play(learner, v, n, seed, observe)

            recording = video_env.record(play, video, path)
            summary["video"] = {"path": str(recording.path), "episodes": video, "frames": recording.frames}
        return summary


def _evaluation_config(
    policy: str, overrides: Sequence[str], npc: str | None, trusted: bool, device: str | None
) -> tuple[DictConfig, DualPolicyConfig]:
    """The config an evaluation runs in (see :func:`evaluate`) and its checked ``dual_policy`` block."""
    cfg = _load_config(policy, overrides, trusted, config_npc=npc is None)
    npc_cfg = cfg.trainer.dual_policy.checkpoint_npc
    given = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    if npc is not None:
        cfg.trainer.dual_policy.enabled = True
        npc_cfg.uri = npc
        # The run's selector picked and read its own NPC (a pool's type: top, range: 2 would refuse
        # a single file or 'random'); keep only what the command line sets.
        for key in _NPC_SELECTOR_KEYS:
            if f"trainer.dual_policy.checkpoint_npc.{key}" not in given:
                npc_cfg[key] = getattr(_NPC_DEFAULTS, key)
    if npc_cfg.trusted is True and not trusted:
        # A run's config.yaml (or an override) must not grant trust the command line did not.
        print(
            f"{PROG}: note: ignoring trainer.dual_policy.checkpoint_npc.trusted=true from the config; only "
            "--trusted lets npc-eval load checkpoints that run code",
            file=sys.stderr,
            flush=True,
        )
    npc_cfg.trusted = trusted
    if npc_cfg.max_checkpoint_bytes is not None and not trusted and _LIMIT_KEY not in given:
        # Nor may it raise the loader's limits: a hostile config.yaml could ask for gigabytes.
        print(
            f"{PROG}: note: ignoring {_LIMIT_KEY}={npc_cfg.max_checkpoint_bytes} from the run's config.yaml; "
            f"set it on the command line ({_LIMIT_KEY}=N) to raise the NPC checkpoint's read limits",
            file=sys.stderr,
            flush=True,
        )
        npc_cfg.max_checkpoint_bytes = None
    if device is not None:
        cfg.device = device
    check_device(cfg.device, "device" if device is None else "--device")
    dp = dual_policy_config(cfg)
    if not dp.enabled:
        raise CLIError(
            "the config trains every agent (trainer.dual_policy.enabled=false), so there is no NPC to play: "
            "pass --npc URI"
        )
    check_npc_uri(dp, "trainer.dual_policy.checkpoint_npc.uri" if npc is None else "--npc")
    return cfg, dp


def _play(
    learner: NPCPolicy, venv: Any, episodes: int, seed: int, observe: Callable[[int], None]
) -> dict[str, Any]:
    """Play ``episodes`` episodes of ``learner`` on every training slot of ``venv``; the summary."""
    learner.reset(venv.num_envs, seed=seed)
    try:
        return play_episodes(policy_actor(learner, venv), venv, episodes, observe=observe).summary()
    except NoEpisodeEnds as e:  # an env without a time limit: one line, not a traceback
        raise CLIError(f"{e} (env.factory)") from e


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _file_stem(policy: str) -> str:
    """A file name part for a policy: a checkpoint file's stem, else the URI with only safe characters."""
    path = Path(policy)
    text = path.stem if path.suffix and path.is_file() else policy
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[-60:] or "policy"


def round_robin_run(
    run: str,
    overrides: Sequence[str] = (),
    *,
    episodes: int = 10,
    num_envs: int = 4,
    seed: int = 12345,
    deterministic: bool = False,
    trusted: bool = False,
    device: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Play every checkpoint of a run directory against every other and print an Elo table.

    Uses the run's env and agent split (see :func:`npc_wrapper.league.round_robin`).

    :param progress: show a progress bar over all pairings' episodes (``None``: on a terminal; without
        one, a line on stderr every ``trainer.log_interval_s`` seconds)
    """
    if not Path(run).is_dir():
        raise CLIError(f"--round-robin needs a run directory (runs/<run>), got {run!r}")
    cfg = _load_config(run, overrides, trusted, config_npc=False)
    env_fn = env_factory(cfg)
    check_device(device or cfg.device, "device" if device is None else "--device")
    dp = cfg.trainer.dual_policy
    shown: EpisodeProgress | None = None

    def observe(done: int, total: int) -> None:
        nonlocal shown
        if shown is None:  # from the first pairing on: the checkpoints are loaded, their count known
            bar = on_terminal() if progress is None else progress
            shown = EpisodeProgress(total, f"{PROG}: round robin", bar, cfg.trainer.log_interval_s, _to_stderr)
        shown(done)

    try:
        result = round_robin(
            run, env_fn, episodes=episodes, num_envs=num_envs,
            training_agents_pct=dp.training_agents_pct,
            training_agents=None if dp.training_agents is None else list(dp.training_agents),
            reset_when_training_agents_dead=bool(cfg.env.get("reset_when_training_agents_dead", True)),
            device=device or cfg.device, deterministic=deterministic, trusted=trusted, seed=seed,
            seat=str(cfg.env.get("seat", "fixed")), observe=observe,
        )
    except (ValueError, NoEpisodeEnds) as e:  # NoEpisodeEnds: an env without a time limit
        raise CLIError(_trust_advice(f"round robin over {run}: {one_line(e)}", e)) from e
    finally:
        if shown is not None:
            shown.close()
    return {"ratings": result.ratings, "players": result.names, "table": result.rows()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Play a trained policy against an NPC for N episodes; print the win rate with a 95% "
        "Wilson confidence interval, and the training-team and NPC-team returns.",
    )
    p.add_argument("policy", help="run directory (its final.zip), checkpoint path or URI, 'random' or 'noop'")
    p.add_argument(
        "overrides", nargs="*", help="config overrides key=value (env=NAME composes from configs/)"
    )
    p.add_argument("--npc", help="NPC URI (default: the run's trainer.dual_policy.checkpoint_npc.uri)")
    p.add_argument("--episodes", type=int, default=100, help="episodes to play (default 100)")
    p.add_argument("--num-envs", type=int, default=8, help="parallel envs (default 8)")
    p.add_argument("--seed", type=int, default=12345, help="seed of envs and policies (default 12345)")
    p.add_argument("--deterministic", action="store_true", help="the evaluated policy acts greedily")
    p.add_argument(
        "--trusted",
        action="store_true",
        help="allow checkpoint formats that run code (pickles, TorchScript); the config cannot grant this",
    )
    p.add_argument("--device", help="where policies run (default: the config's device)")
    p.add_argument("--json", type=Path, help="also write the summary to this JSON file")
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show a progress bar (default: on a terminal; otherwise a line on stderr every "
        "trainer.log_interval_s seconds)",
    )
    p.add_argument(
        "--video", type=int, nargs="?", const=2, default=0, metavar="N",
        help="also record N episodes (default 2) to an mp4 file in an env of their own (pip install "
        "'npc-wrapper[video]'); give N, or put --video last, when config overrides follow",
    )
    p.add_argument(
        "--video-dir", type=Path,
        help="where --video writes (default: RUN/videos for a run directory, else videos/)",
    )
    p.add_argument(
        "--round-robin", action="store_true",
        help="play every checkpoint of the run directory against every other (--episodes per pair) "
        "and print an Elo table",
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``npc-eval``."""
    # Intermixed: overrides may follow options (npc-eval runs/x --episodes 2 env.factory.max_cycles=50).
    args = _parser().parse_intermixed_args(argv)
    try:
        if args.json is not None:  # now, not after the episodes have been played
            check_writable_dir(args.json.parent, f"--json {args.json}")
    except CLIError as e:
        die(PROG, e)
    if args.round_robin:
        if args.npc is not None:  # the checkpoints play each other: there is no NPC to choose
            die(PROG, "--npc has no effect with --round-robin (every checkpoint of the run plays every "
                "other); drop it")
        try:
            table = round_robin_run(
                args.policy, args.overrides, episodes=args.episodes, num_envs=args.num_envs, seed=args.seed,
                deterministic=args.deterministic, trusted=args.trusted, device=args.device,
                progress=args.progress,
            )
        except CLIError as e:
            if os.environ.get("NPC_WRAPPER_DEBUG"):
                raise
            die(PROG, e)
        _write_json(args.json, table)
        return
    try:
        summary = evaluate(
            args.policy,
            args.overrides,
            npc=args.npc,
            episodes=args.episodes,
            num_envs=args.num_envs,
            seed=args.seed,
            deterministic=args.deterministic,
            trusted=args.trusted,
            device=args.device,
            progress=args.progress,
            video=args.video,
            video_dir=args.video_dir,
        )
    except CLIError as e:
        if os.environ.get("NPC_WRAPPER_DEBUG"):
            raise
        die(PROG, e)
    print(
        f"{summary['policy']} ({agent_ranges(summary['training_agents'])}) vs NPC {summary['npc']} "
        f"({agent_ranges(summary['npc_agents'])}) on {summary['env']}:"
    )
    print(format_summary(summary, "  "))
    if "video" in summary:
        v = summary["video"]
        print(f"  video of {v['episodes']} episodes ({v['frames']} frames): {v['path']}")
    _write_json(args.json, summary)
    sys.stdout.flush()


def _write_json(path: Path | None, result: dict[str, Any]) -> None:
    """``--json``: write ``result`` to ``path`` (nothing without it), one line on failure."""
    if path is None:
        return
    try:
        with writing("the --json output", path):
            path.write_text(json.dumps(result, indent=2, default=float))
    except CLIError as e:
        die(PROG, e)


if __name__ == "__main__":
    main()
