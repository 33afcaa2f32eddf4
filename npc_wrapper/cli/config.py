"""Where the ``npc-train`` configs live and how they are composed, checked against the schema and explained.

Config files live in the repository's top-level ``configs/`` directory. A source checkout (and an
editable install) reads them from there; a regular install ships a copy as wheel data files under
``<prefix>/share/npc-wrapper/configs``, found through the installed distribution's file list.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    ValidationError,
)

from npc_wrapper.cli.errors import CLIError, one_line
from npc_wrapper.cli.run_name import RESOLVER, training_side
from npc_wrapper.cli.schema import TrainConfig
from npc_wrapper.config import DualPolicyConfig, LeagueConfig

__all__ = [
    "DATA_DIR",
    "config_dir",
    "data_path",
    "register_configs",
    "compose_config",
    "check_schema",
    "explain_config_error",
    "dual_policy_config",
    "league_config",
    "backend_options",
    "read_run_config",
    "shipped_env_targets",
]

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
#: The shipped default NPC checkpoint(s).
DATA_DIR = PACKAGE_ROOT / "data"


def config_dir() -> Path:
    """The directory holding ``config.yaml`` and the ``env/``, ``trainer/``, ``user/`` groups.

    ``NPC_WRAPPER_CONFIG_DIR`` wins when set; then the source checkout's ``configs/``; then the
    copy installed with the package.
    """
    env = os.environ.get("NPC_WRAPPER_CONFIG_DIR")
    if env:
        return Path(env).resolve()
    source = PACKAGE_ROOT.parent / "configs"
    if (source / "config.yaml").is_file():
        return source
    for installed in _installed_config_dirs():
        if (installed / "config.yaml").is_file():
            return installed
    raise CLIError(
        "cannot find the npc-wrapper config files (configs/config.yaml): reinstall the package, or point "
        "NPC_WRAPPER_CONFIG_DIR at a copy of the repository's configs/ directory"
    )


def _installed_config_dirs() -> list[Path]:
    """Where an install may have put the configs: the distribution's own record of the file, then the
    data directories of the interpreter's install schemes (venv/system, user), then ``--target`` layouts."""
    rel = Path("share", "npc-wrapper", "configs")
    found: list[Path] = []
    try:
        files = importlib.metadata.distribution("npc-wrapper").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    recorded = f"{rel.as_posix()}/config.yaml"
    found += [Path(f.locate()).resolve().parent for f in files if f.as_posix().endswith(recorded)]
    for scheme in (None, f"{os.name}_user"):
        try:
            data = sysconfig.get_path("data", scheme) if scheme else sysconfig.get_path("data")
            found.append(Path(data) / rel)
        except KeyError:
            pass
    found.append(PACKAGE_ROOT.parent / rel)
    return found


def _shipped_env_configs() -> list[dict[str, Any]]:
    """The env configs of :func:`config_dir`, as plain dicts (files that do not read as one are left out:
    npc-train cannot compose them either, and leaving them out only refuses more)."""
    configs = []
    for file in sorted((config_dir() / "env").glob("*.yaml")):
        try:
            env = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeError, yaml.YAMLError):
            continue
        if isinstance(env, dict) and isinstance(env.get("env"), dict):
            env = env["env"]  # a global file (``# @package _global_``), which sets trainer keys too
        if isinstance(env, dict):
            configs.append(env)
    return configs


def shipped_env_targets() -> frozenset[str]:
    """The ``_target_`` s that the env configs of :func:`config_dir` name (env factories and wrappers): the
    code a run directory's ``config.yaml`` may name without ``npc-eval --trusted``.
    """
    targets: set[str] = set()
    for env in _shipped_env_configs():
        nodes = [env.get("factory"), *(env.get("wrappers") or [])]
        found = (n.get("_target_") for n in nodes if isinstance(n, dict))
        targets.update(t for t in found if isinstance(t, str))
    return frozenset(targets)


def shipped_env_npcs() -> frozenset[str]:
    """The NPCs (``env.npc``) that the env configs of :func:`config_dir` name, such as the shipped
    connect-four bot ``npc_wrapper.bots:ConnectFourBot``: a ``pkg.module:callable`` among them is shipped
    code, which a run directory's ``config.yaml`` may name without ``npc-eval --trusted``."""
    return frozenset(env["npc"] for env in _shipped_env_configs() if isinstance(env.get("npc"), str))


def data_path(name: str) -> str:
    """Absolute path of a file shipped in ``npc_wrapper/data`` (the ``${npc_data:NAME}`` resolver).

    A missing file is not an error here: the NPC check reports it only when the NPC is used.
    """
    return str(DATA_DIR / name)


_registered = False


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore and the ``${npc_data:NAME}`` and ``${npc_training_side:}``
    (the default run name's, :mod:`npc_wrapper.cli.run_name`) resolvers (idempotent)."""
    global _registered
    if _registered:
        return
    ConfigStore.instance().store(name="npc_train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("npc_data"):
        OmegaConf.register_new_resolver("npc_data", data_path)
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, training_side)
    _registered = True


def compose_config(
    overrides: Sequence[str] = (), config_name: str = "config", extra_dirs: Sequence[str] = ()
) -> DictConfig:
    """Compose the ``npc-train`` config with Hydra's compose API (no run directory, no logging set-up).

    :param overrides: command-line style overrides (``trainer.total_timesteps=1000``)
    :param config_name: primary config file name, without ``.yaml``
    :param extra_dirs: more config directories searched before the shipped ones (``--config-dir``)
    :raises CLIError: with a one-line message on an unknown key, a bad value or a missing group option
    """
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
    keys that Hydra's struct mode lets through.

    :param cfg: a composed config
    :raises CLIError: naming the key
    """
    try:
        # A plain container: merging the typed nodes themselves would carry the added keys along.
        OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.to_container(cfg, resolve=False))
    except Exception as e:
        raise CLIError(explain_config_error(e)) from e


def explain_config_error(e: BaseException) -> str:
    """One line for a Hydra/OmegaConf composition error, naming the key and what to do.

    :param e: the error Hydra or OmegaConf raised
    """
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
        inner = cause.__cause__ or cause.__context__  # OmegaConf raises a resolver's error in its context
        return one_line(inner if isinstance(inner, CLIError) else str(cause))  # a resolver's own line
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
    node: Any = OmegaConf.structured(TrainConfig)
    for part in full_key.split(".")[:-1]:
        name = part.split("[")[0]
        if not (isinstance(node, DictConfig) and dataclasses.is_dataclass(node._metadata.object_type)):
            return True  # below a dict, a list or an Any node
        if name not in node.keys():  # keys(), since `in` is False for a MISSING value such as env.factory
            return False  # a misspelt parent
        node = node._get_node(name)
        if "[" in part:
            return True
    return not (isinstance(node, DictConfig) and dataclasses.is_dataclass(node._metadata.object_type))


#: Limits of a run directory's ``config.yaml`` (npc-train writes about 150 values in 4 kB): a file past
#: them is not one npc-train wrote, and reading it could take the machine (YAML aliases expand).
RUN_CONFIG_MAX_BYTES = 256 * 1024
RUN_CONFIG_MAX_NODES = 20_000
RUN_CONFIG_MAX_DEPTH = 64


def read_run_config(path: Path) -> DictConfig:
    """A run directory's ``config.yaml``, read within limits: a file of at most 256 KiB, at most 20,000
    values and 64 levels once its YAML aliases are expanded, and no ``${...}`` interpolation (npc-train
    writes it resolved). A run directory may come from anyone; a YAML alias bomb or a chain of doubling
    interpolations would otherwise take minutes and gigabytes to read.

    :param path: the ``config.yaml``
    :raises CLIError: naming the file and the limit
    """
    try:
        size = path.stat().st_size
        if size > RUN_CONFIG_MAX_BYTES:
            raise CLIError(
                f"{path} is {size} bytes, more than the limit of {RUN_CONFIG_MAX_BYTES} for a run's "
                "config.yaml (npc-train writes about 4 kB): it is not a config npc-train wrote"
            )
        text = path.read_text(encoding="utf-8")
        _check_run_config_nodes(yaml.compose(text, Loader=yaml.SafeLoader), path)
        return OmegaConf.create(text)  # type: ignore[return-value]
    except CLIError:
        raise
    except (OSError, UnicodeError, yaml.YAMLError, RecursionError) as e:
        raise CLIError(f"cannot read {path}: {type(e).__name__}: {one_line(e)}") from None
    except Exception as e:  # OmegaConf's own refusals (a list at the top, a bad key)
        raise CLIError(f"{path}: {explain_config_error(e)}") from e


def _check_run_config_nodes(root: yaml.Node | None, path: Path) -> None:
    """Walk the YAML node graph as it would be copied out, alias by alias, stopping at the limits."""
    stack = [(root, 1)] if root is not None else []
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > RUN_CONFIG_MAX_NODES or depth > RUN_CONFIG_MAX_DEPTH:
            raise CLIError(
                f"{path} holds more than {RUN_CONFIG_MAX_NODES} values or is nested more than "
                f"{RUN_CONFIG_MAX_DEPTH} levels deep once its YAML aliases (*name) are expanded: it is not a "
                "config npc-train wrote"
            )
        if isinstance(node, yaml.ScalarNode):
            if "${" in str(node.value):
                raise CLIError(
                    f"{path} holds the interpolation {one_line(node.value)[:80]!r}, but npc-train writes a "
                    "run's config.yaml resolved, without interpolations: it is not a config npc-train wrote"
                )
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend((item, depth + 1) for pair in node.value for item in pair)


def league_config(cfg: DictConfig) -> LeagueConfig:
    """The ``trainer.league`` block, validated.

    :param cfg: a composed config
    :raises CLIError: naming the key to fix
    """
    try:
        return LeagueConfig.from_dict(cfg.trainer.league)
    except ValueError as e:
        raise CLIError(f"trainer.league: {one_line(e)}") from e


def backend_options(cfg: DictConfig) -> dict[str, Any]:
    """The ``trainer`` keys that say what the workers are, as ``make_vec_env``'s keyword arguments.

    :param cfg: a composed config
    """
    t = cfg.trainer
    resources = OmegaConf.to_container(t.worker_resources) or None  # empty: the backend's default
    return {"backend": t.backend, "start_method": t.start_method, "ray_address": t.ray_address,
            "worker_resources": resources, "step_timeout": t.step_timeout}


def dual_policy_config(cfg: DictConfig) -> DualPolicyConfig:
    """The ``trainer.dual_policy`` block, validated.

    :param cfg: a composed config
    :raises CLIError: naming the key to fix
    """
    try:
        return DualPolicyConfig.from_dict(cfg.trainer.dual_policy, where="trainer.dual_policy")
    except ValueError as e:
        raise CLIError(str(e)) from e
