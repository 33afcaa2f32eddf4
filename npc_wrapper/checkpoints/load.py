"""NPC policies from checkpoints: :func:`load_npc`, format detection and the dispatch to each loader.

:func:`load_npc` turns a URI or a :class:`~npc_wrapper.config.CheckpointConfig` into an
:class:`~npc_wrapper.npcs.policies.NPCPolicy` (one checkpoint) or an
:class:`~npc_wrapper.npcs.pool.NPCPool` (several, when a selector picks more than one): the URI is
parsed (:mod:`~npc_wrapper.checkpoints.uri`), the selector picks among the candidates
(:mod:`~npc_wrapper.checkpoints.select`), and each chosen file is loaded by the loader of its format.

Formats, detected from the file's content: Stable-Baselines3 ``.zip`` (any algorithm whose policy
class comes with SB3 or sb3-contrib; :mod:`~npc_wrapper.checkpoints.sb3`), TorchScript (``trusted``
only: it is code), and ``torch.save`` state_dicts with ``policy_class``
(:mod:`~npc_wrapper.checkpoints.torch`). Nothing is unpickled from a checkpoint unless ``trusted``
(:mod:`~npc_wrapper.checkpoints.safe_pickle`); anything that needs it is refused with an error
saying how to opt in. Untrusted files are read within limits (:mod:`~npc_wrapper.checkpoints.bounded`).
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces

from npc_wrapper.checkpoints.bounded import Limits, contained, open_zip, regular_file
from npc_wrapper.checkpoints.sb3 import load_sb3
from npc_wrapper.checkpoints.select import CHECKPOINT_SUFFIXES, Candidate, as_config, choose
from npc_wrapper.checkpoints.torch import load_torch
from npc_wrapper.checkpoints.uri import import_object
from npc_wrapper.config import CheckpointConfig, check_max_bytes
from npc_wrapper.errors import CheckpointError, short_repr
from npc_wrapper.npcs.policies import CallablePolicy, ConstantPolicy, NPCPolicy, RandomPolicy
from npc_wrapper.npcs.pool import NPCPool

__all__ = ["detect_format", "load_npc"]

logger = logging.getLogger(__name__)

_FORMAT_NAMES = {
    "sb3": "Stable-Baselines3 model (.zip)",
    "torchscript": "TorchScript module",
    "torch": "torch.save archive",
    "torch-legacy": "torch.save file (legacy pickle format)",
}


def detect_format(path: str | os.PathLike[str]) -> str:
    """The checkpoint format of a file, from its content.

    :return: ``"sb3"``, ``"torchscript"``, ``"torch"`` (``torch.save`` archive) or ``"torch-legacy"``
    :raises CheckpointError: missing, empty, truncated or unrecognised files
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; a checkpoint file is needed here")
    if regular_file(path, "checkpoint file") == 0:
        raise CheckpointError(
            f"checkpoint file {path} is empty (0 bytes): the save or download did not complete"
        )
    with open(path, "rb") as f:
        head = f.read(4)
    if zipfile.is_zipfile(path):
        with open_zip(path, f"checkpoint {path}") as z:
            names = z.namelist()
        if "data" in names and "policy.pth" in names:
            return "sb3"
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        raise CheckpointError(
            f"{path} is a zip archive but not a checkpoint format this library reads (it holds "
            f"{short_repr(names)}); expected a Stable-Baselines3 model (model.save), a TorchScript module "
            "(torch.jit.save) or a torch.save state_dict"
        )
    if head.startswith(b"PK"):
        raise CheckpointError(
            f"cannot read checkpoint {path}: it starts like a zip archive but its end is missing or damaged, "
            "so the file is corrupt or truncated; re-save or re-download it. Nothing was loaded"
        )
    if head[:1] == b"\x80":  # pickle protocol opcode: torch.save(..., _use_new_zipfile_serialization=False)
        return "torch-legacy"
    raise CheckpointError(
        f"{path} is not a checkpoint format this library reads (Stable-Baselines3 .zip, TorchScript, "
        "torch.save state_dict); the file may be corrupt or truncated"
    )


def _checkpoint_in_dir(root: Path, source: str) -> Path:
    """The one checkpoint file in a downloaded artifact directory (none may link outside it)."""
    files = sorted(contained(root, p, f"the download of {source}") for p in root.rglob("*") if p.is_file())
    ckpts = [p for p in files if p.suffix.lower() in CHECKPOINT_SUFFIXES]
    if not ckpts:
        ckpts = [p for p in files if p.suffix.lower() not in (".json", ".md", ".txt", ".yaml", ".yml")]
    if len(ckpts) != 1:
        raise CheckpointError(
            f"{source} ({root}) holds {len(ckpts)} checkpoint files "
            f"{short_repr([str(p.relative_to(root)) for p in ckpts])}; an artifact version must hold exactly one (log "
            "each checkpoint as its own version)"
        )
    return ckpts[0]


def _load_candidate(
    cand: Candidate,
    obs: spaces.Space,
    act: spaces.Space,
    cfg: CheckpointConfig,
    *,
    trusted: bool,
    device: Any,
    deterministic: bool,
    limits: Limits,
) -> NPCPolicy:
    path = cand.local_path()
    if path.is_dir():
        path = _checkpoint_in_dir(path, cand.source)
    fmt = detect_format(path)
    logger.info("NPC %r: %s detected as %s", cand.name, path, _FORMAT_NAMES[fmt])
    common = {"trusted": trusted, "device": device, "deterministic": deterministic, "name": cand.name}
    if fmt == "sb3":
        return load_sb3(path, obs, act, limits=limits, **common)
    return load_torch(path, fmt, obs, act, cfg, limits=limits, **common)


def _load_import(spec: str, obs: spaces.Space, act: spaces.Space) -> NPCPolicy:
    obj = import_object(spec, "uri")
    label = spec.rpartition(":")[2]
    if isinstance(obj, NPCPolicy):
        return obj
    if isinstance(obj, type):
        if issubclass(obj, NPCPolicy):
            try:
                return obj(obs, act)
            except TypeError as e:
                raise CheckpointError(
                    f"{spec} is an NPCPolicy class; it must accept (observation_space, action_space): {e}"
                ) from e
        if issubclass(obj, torch.nn.Module):
            raise CheckpointError(
                f"{spec} is a torch module class, not a policy: load its weights with uri=<checkpoint file> "
                f"and policy_class={spec!r}"
            )
        raise CheckpointError(
            f"{spec} is a class that is not an NPCPolicy; give an NPCPolicy subclass or a function obs_batch "
            "-> actions"
        )
    if callable(obj):
        return CallablePolicy(obj, obs, act, name=label)
    raise CheckpointError(
        f"{spec} is a {type(obj).__name__}, not a function obs_batch -> actions or an NPCPolicy class"
    )


def load_npc(
    spec: str | os.PathLike[str] | CheckpointConfig,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    *,
    device: str | torch.device = "auto",
    deterministic: bool = False,
    trusted: bool = False,
    max_checkpoint_bytes: int | None = None,
) -> NPCPolicy | NPCPool:
    """Load the NPC policy a URI or :class:`~npc_wrapper.config.CheckpointConfig` names.

    :param spec: ``file://PATH``, a plain path (file or directory), ``wandb://...``, ``"random"``,
        ``"noop"``, ``"pkg.module:callable"``, or a ``CheckpointConfig`` (selector, pool weights,
        ``policy_class`` for state_dicts, ``trusted``...)
    :param observation_space: the NPC agents' observation space
    :param action_space: the NPC agents' action space
    :param device: where the network runs (``"auto"``: CUDA when available)
    :param deterministic: greedy actions (or set ``CheckpointConfig.deterministic``)
    :param trusted: allow formats that run code: pickles, TorchScript (or set ``CheckpointConfig.trusted``);
        a trusted checkpoint is also read without the limits below
    :param max_checkpoint_bytes: the most bytes reading an untrusted checkpoint may take for each of:
        a zip member decompressed, the spaces its data declares, the network it describes, its
        weights (or set ``CheckpointConfig.max_checkpoint_bytes``). ``None``: limits proportional to
        the NPC agents' spaces and to the network, at most 256 MiB each (README, "Safety")
    :return: an :class:`NPCPolicy` for one checkpoint; an :class:`NPCPool` whose members are named
        after their checkpoints when the selector picks several
    :raises CheckpointError: missing/corrupt files, formats needing ``trusted``, selector problems,
        spaces that do not fit (the message shows both; torch networks are dry-run on them); a
        :class:`~npc_wrapper.errors.CheckpointLimitError` for a file past a limit

    Example (from a clone of the repository; the shipped prey of mpe2 simple_tag, whose observations
    ``npc-train`` pads to 16 values)::

        >>> from gymnasium import spaces
        >>> import npc_wrapper as nw
        >>> prey_obs = spaces.Box(-float("inf"), float("inf"), (16,), "float32")
        >>> nw.load_npc(
        ...     "file://npc_wrapper/data/simple_tag_npc.zip", prey_obs, spaces.Discrete(5), device="cpu"
        ... )
        SB3Policy(name='simple_tag_npc', obs=Box(-inf, inf, (16,), float32), act=Discrete(5))
    """
    cfg = as_config(spec)
    deterministic = deterministic or cfg.deterministic
    trusted = trusted or cfg.trusted
    check_max_bytes(max_checkpoint_bytes, "max_checkpoint_bytes")
    max_bytes = max_checkpoint_bytes if max_checkpoint_bytes is not None else cfg.max_checkpoint_bytes
    limits = Limits.of(observation_space, action_space, max_bytes, trusted)
    parsed, chosen = choose(cfg, limits)
    if parsed.kind in ("scripted", "import"):
        if cfg.type != "specific":
            raise CheckpointError(
                f"uri {parsed.text!r} is a scripted NPC; selectors (type={cfg.type!r}) apply to checkpoint "
                "files, directories and wandb artifacts. Set type: specific"
            )
        logger.info("NPC: scripted %s", parsed.text)
        if parsed.value == "random":
            return RandomPolicy(observation_space, action_space)
        if parsed.value == "noop":
            return ConstantPolicy(observation_space, action_space, action=cfg.noop_action)
        return _load_import(parsed.value, observation_space, action_space)
    if cfg.weights is not None and len(cfg.weights) != len(chosen):
        raise CheckpointError(
            f"checkpoint_npc.weights has {len(cfg.weights)} entries but {len(chosen)} checkpoints were "
            f"selected ({[c.name for c in chosen]}); give one weight per checkpoint"
        )
    members = [
        _load_candidate(
            c,
            observation_space,
            action_space,
            cfg,
            trusted=trusted,
            device=device,
            deterministic=deterministic,
            limits=limits,
        )
        for c in chosen
    ]
    if len(members) == 1:
        return members[0]
    return NPCPool(members, cfg.weights)
