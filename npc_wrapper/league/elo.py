"""Elo ratings: one game at a time (the league's live ratings), or fitted to all games at once.

:func:`elo_update` moves two ratings after one game; :func:`fit_ratings` finds the ratings that
best explain a whole table of games (Bradley-Terry), so a round robin's table does not depend on
the order of play.
"""

from __future__ import annotations

import numpy as np

__all__ = ["OUTCOME_SCORE", "elo_expected", "elo_update", "fit_ratings"]

#: The learner's score for each episode outcome reported in ``info["npc_wrapper/episode"]``.
OUTCOME_SCORE = {"win": 1.0, "draw": 0.5, "loss": 0.0}


def elo_expected(rating: float, opponent: float) -> float:
    """Expected score of a player rated ``rating`` against one rated ``opponent``."""
    return 1.0 / (1.0 + 10.0 ** ((opponent - rating) / 400.0))


def elo_update(rating: float, opponent: float, score: float, k: float) -> tuple[float, float]:
    """Both players' new ratings after one game.

    :param rating: the first player's rating
    :param opponent: the second player's rating
    :param score: the first player's result (1 win, 0.5 draw, 0 loss)
    :param k: the K-factor
    :return: ``(new rating, new opponent rating)``; the two changes cancel out
    """
    delta = k * (score - elo_expected(rating, opponent))
    return rating + delta, opponent - delta


def fit_ratings(score: np.ndarray, games: np.ndarray, initial_elo: float = 1200.0,
                iterations: int = 10_000, tol: float = 1e-10) -> np.ndarray:
    """Elo ratings that best explain all games at once (Bradley-Terry maximum likelihood).

    Draws count as half a win. Each player also gets one virtual draw against a reference player
    rated ``initial_elo``, which anchors the scale and keeps perfect records finite.

    :param score: ``score[i, j]``: ``i``'s total score against ``j``
    :param games: ``games[i, j]``: games played between ``i`` and ``j`` (a symmetric matrix)
    :return: one rating per player
    """
    n = len(score)
    pair_games = np.asarray(games, dtype=np.float64)
    won = score.sum(axis=1) + 0.5  # + the virtual draw
    gamma = np.ones(n)
    for _ in range(iterations):  # Hunter's MM algorithm
        denom = (pair_games / (gamma[:, None] + gamma[None, :])).sum(axis=1) + 1.0 / (gamma + 1.0)
        new = won / denom
        if np.max(np.abs(np.log(new) - np.log(gamma))) < tol:
            gamma = new
            break
        gamma = new
    return initial_elo + 400.0 * np.log10(gamma)
