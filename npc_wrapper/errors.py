"""Every exception the package raises on purpose, and the shared wording of checkpoint errors.

``CheckpointError`` is a ``ValueError`` (bad input: a URI, a file, a selector), so code that
catches ``ValueError`` around ``make_vec_env`` also catches a checkpoint that cannot be loaded.
The W&B errors are checkpoint errors of ``wandb://`` URIs. :class:`NoEpisodeEnds` is a
``RuntimeError``: the env runs, but its episodes never end. :class:`NPCOutputError` is a
``ValueError``: an NPC's network gave NaN or infinite output.

The command-line programs' own ``CLIError`` lives in :mod:`npc_wrapper.cli.common`: it only
carries a message to print as one line, and nothing outside the CLI raises it.
"""

from __future__ import annotations

import os

__all__ = [
    "TRUST_HINT",
    "CheckpointError",
    "TrustRequiredError",
    "WandbError",
    "WandbUnavailableError",
    "WandbNotFoundError",
    "NoEpisodeEnds",
    "NPCOutputError",
    "corrupt_checkpoint",
]

#: How loader errors say to opt in to trust; command-line front ends replace it with their own flag.
TRUST_HINT = (
    "pass trusted=True (in code) or set trusted: true (checkpoint_npc.trusted in config); only do this for "
    "checkpoints you trust, because loading then runs code stored in the file"
)


class CheckpointError(ValueError):
    """A checkpoint could not be found, selected, read or fitted to the NPC agents."""


class TrustRequiredError(CheckpointError):
    """Loading this checkpoint would run code stored in it; it needs ``trusted=True``."""


class WandbError(CheckpointError):
    """A ``wandb://`` checkpoint could not be resolved or downloaded."""


class WandbUnavailableError(WandbError):
    """W&B could not be reached or refused the credentials, and the cache could not answer."""


class WandbNotFoundError(WandbError):
    """W&B answered that the artifact, version or collection does not exist."""


class NoEpisodeEnds(RuntimeError):
    """No episode that counts ended for the bound's number of vector steps: an env without a time limit.

    :param message: what happened and what to change
    :param steps: the bound that ran out (vector steps without a counted episode end)
    :param played: the episodes recorded before it ran out
    """

    def __init__(self, message: str, steps: int, played: int) -> None:
        super().__init__(message)
        self.steps = steps
        self.played = played

    def __reduce__(self) -> tuple[type, tuple[str, int, int]]:
        # Pickle rebuilds an exception from its args, which hold the message alone.
        return type(self), (str(self), self.steps, self.played)


class NPCOutputError(ValueError):
    """An NPC policy's network gave output it cannot act on: NaN or infinite logits or actions, as a
    diverged checkpoint gives (sampling would silently pick action 0).

    :param message: which policy, and what it gave
    :param rows: the entries of the batch it was given whose output was invalid, ascending
    """

    def __init__(self, message: str, rows: list[int]) -> None:
        super().__init__(message)
        self.rows = rows

    def __reduce__(self) -> tuple[type, tuple[str, list[int]]]:
        return type(self), (str(self), self.rows)


def corrupt_checkpoint(label: str | os.PathLike[str], e: BaseException) -> CheckpointError:
    """The error for a checkpoint file that cannot be read: ``label`` names it, ``e`` is what failed."""
    detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return CheckpointError(
        f"cannot read checkpoint {label}: the file is corrupt or truncated "
        f"({type(e).__name__}{': ' + detail if detail else ''}); re-save or re-download it. Nothing was "
        "loaded"
    )
