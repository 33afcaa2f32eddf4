"""Scripted NPCs for turn-based games, vectorized over a batch of positions.

``npc="npc_wrapper.bots:ConnectFourBot"`` plays PettingZoo's ``connect_four_v3``: it wins when it
can, else blocks the opponent's immediate win, else plays a random legal column (seeded by the
wrapper, as every NPC). It reads the board from the observation the env gives the player to move
(plane 0 its own pieces, plane 1 the opponent's), so it plays legal moves with or without masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from npc_wrapper.npcs.policies import NPCPolicy

__all__ = ["ConnectFourBot", "connect_four_moves"]

ROWS, COLS = 6, 7


def _lines() -> np.ndarray:
    """Every four-in-a-row of the board as 4 cell indices (row * COLS + col): 69 lines."""
    cells = np.arange(ROWS * COLS).reshape(ROWS, COLS)
    lines = []
    for dr, dc in ((0, 1), (1, 0), (1, 1), (-1, 1)):
        for r in range(ROWS):
            for c in range(COLS):
                end_r, end_c = r + 3 * dr, c + 3 * dc
                if 0 <= end_r < ROWS and end_c < COLS:
                    lines.append([cells[r + i * dr, c + i * dc] for i in range(4)])
    return np.array(lines, dtype=np.intp)


_LINES = _lines()
#: ``_INCIDENCE[cell, line]``: whether ``cell`` is on ``line``.
_INCIDENCE = np.zeros((ROWS * COLS, len(_LINES)), dtype=np.int32)
_INCIDENCE[_LINES, np.arange(len(_LINES))[:, None]] = 1


def _completing_cells(pieces: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """``(B, cells)``: the empty cells that complete a line of three of ``pieces`` (``(B, cells)`` bool)."""
    threes = (pieces.astype(np.int32) @ _INCIDENCE) == 3
    return ((threes.astype(np.int32) @ _INCIDENCE.T) > 0) & empty


def connect_four_moves(board: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """One column per position: a winning move, else a block of the opponent's win, else a random
    legal move.

    :param board: ``(B, 6, 7, 2)`` connect_four_v3 observations of the player to move (plane 0: its
        pieces, plane 1: the opponent's; row 0 is the top)
    :param mask: ``(B, 7)`` legal columns (nonzero = legal), or ``None`` to read them off the board
        (a column is legal while its top cell is empty)
    :param rng: draws among equally good moves
    :return: ``(B,)`` int64 columns

    Example::

        >>> import numpy as np
        >>> from npc_wrapper.bots import connect_four_moves
        >>> board = np.zeros((2, 6, 7, 2), dtype=np.int8)
        >>> board[0, 5, :3, 0] = 1  # position 0: three of ours on the bottom row, columns 0-2
        >>> board[1, 3:, 4, 1] = 1  # position 1: three of the opponent's stacked in column 4
        >>> connect_four_moves(board, None, np.random.default_rng(0))  # win at column 3; block column 4
        array([3, 4])
    """
    n = len(board)
    own = board[..., 0].reshape(n, ROWS * COLS) != 0
    opp = board[..., 1].reshape(n, ROWS * COLS) != 0
    empty = ~(own | opp)
    legal = empty[:, :COLS] if mask is None else np.asarray(mask) != 0
    # The cell a piece dropped in each column lands on: the lowest empty one (a full column is illegal).
    lowest_empty_row = ROWS - 1 - np.argmax(empty.reshape(n, ROWS, COLS)[:, ::-1, :], axis=1)
    landing = lowest_empty_row * COLS + np.arange(COLS)
    wins = np.take_along_axis(_completing_cells(own, empty), landing, axis=1) & legal
    blocks = np.take_along_axis(_completing_cells(opp, empty), landing, axis=1) & legal
    best = np.where(blocks.any(axis=1, keepdims=True), blocks, legal)
    best = np.where(wins.any(axis=1, keepdims=True), wins, best)
    return np.where(best, rng.random(best.shape), -1.0).argmax(axis=1).astype(np.int64)


class ConnectFourBot(NPCPolicy):
    """connect_four_v3's scripted opponent: :func:`connect_four_moves` for a batch of NPC rows.

    :param observation_space: ``Box(0, 1, (6, 7, 2))``, the ``observation`` entry of connect_four_v3
    :param action_space: ``Discrete(7)``
    """

    #: Takes the rows' action masks as ``act(..., mask=...)``.
    takes_mask = True

    def __init__(
        self, observation_space: spaces.Space, action_space: spaces.Space, name: str = "connect_four_bot"
    ) -> None:
        super().__init__(observation_space, action_space, name)
        if observation_space.shape != (ROWS, COLS, 2) or action_space != spaces.Discrete(COLS):
            raise ValueError(
                f"ConnectFourBot plays connect_four_v3: it needs observations of shape {(ROWS, COLS, 2)} and "
                f"action space Discrete({COLS}), got {observation_space} and {action_space}"
            )
        self._rng = np.random.default_rng()

    def reset(self, num_rows: int, seed: int | None = None) -> None:
        super().reset(num_rows, seed)
        self._rng = np.random.default_rng(seed)

    def act(
        self, obs: np.ndarray, rows: np.ndarray, episode_start: np.ndarray, mask: np.ndarray | None = None
    ) -> Any:
        """:param mask: ``(len(rows), 7)`` legal columns; ``None``: read off the board"""
        return connect_four_moves(obs, mask, self._rng)
