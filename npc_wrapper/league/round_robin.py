"""Round robin: every checkpoint plays every other one, and Elo ratings are fitted to all the games.

:func:`round_robin` takes a directory (a run directory: its ``final.zip``, ``checkpoints/`` and
league snapshots), a list of checkpoints or policies, or a name -> spec mapping; each ordered pair
plays a fixed number of episodes through :func:`~npc_wrapper.evaluation.play_episodes`, one player
on each side of a symmetric game (see :mod:`~npc_wrapper.league.checks`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import AECEnv

from npc_wrapper.agents import build_layout
from npc_wrapper.checkpoints.bounded import Limits, member_chunks, open_zip
from npc_wrapper.checkpoints.select import CHECKPOINT_SUFFIXES
from npc_wrapper.config import _is_int
from npc_wrapper.errors import NoEpisodeEnds
from npc_wrapper.evaluation import play_episodes, policy_actor
from npc_wrapper.factory import make_vec_env
from npc_wrapper.league.checks import check_league_layout
from npc_wrapper.league.elo import fit_ratings
from npc_wrapper.npcs.policies import NPCPolicy
from npc_wrapper.npcs.resolve import as_npc_policy
from npc_wrapper.turn_env import build_turn_layout

__all__ = ["RoundRobinResult", "round_robin"]

logger = logging.getLogger(__name__)


@dataclass
class RoundRobinResult:
    """Games between every ordered pair of players and the ratings fitted to them.

    ``score[i, j]`` is player ``i``'s total score against ``j`` (win 1, draw 0.5) over
    ``games[i, j]`` games, on either side of the env.
    """

    names: list[str]
    ratings: dict[str, float]
    score: np.ndarray
    games: np.ndarray
    wins: np.ndarray
    draws: np.ndarray
    losses: np.ndarray

    def rows(self) -> list[dict[str, Any]]:
        """One record per player, ranked by rating: elo, games, wins, draws, losses and mean score
        (``None`` without games)."""
        out = []
        for i in sorted(range(len(self.names)), key=lambda i: -self.ratings[self.names[i]]):
            games = int(self.games[i].sum())
            out.append({
                "player": self.names[i],
                "elo": self.ratings[self.names[i]],
                "games": games,
                "wins": int(self.wins[i].sum()),
                "draws": int(self.draws[i].sum()),
                "losses": int(self.losses[i].sum()),
                "score": float(self.score[i].sum()) / games if games else None,
            })
        return out

    def table(self) -> str:
        """The players ranked by rating, as a text table."""
        width = max([len("player")] + [len(n) for n in self.names])
        lines = [
            f"{'rank':>4}  {'player':<{width}}  {'elo':>7}  {'games':>5}  {'W':>4}  {'D':>4}  {'L':>4}  "
            f"{'score':>5}"
        ]
        for rank, r in enumerate(self.rows(), 1):
            score = float("nan") if r["score"] is None else r["score"]
            lines.append(
                f"{rank:>4}  {r['player']:<{width}}  {r['elo']:>7.1f}  {r['games']:>5}  "
                f"{r['wins']:>4}  {r['draws']:>4}  {r['losses']:>4}  {score:>5.2f}"
            )
        return "\n".join(lines)


def _checkpoint_files(root: Path) -> list[Path]:
    found = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") or part == "wandb" for part in rel):
            continue  # hidden files and wandb's own copies of the run's files
        if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES:
            found.append(p)
    return found


def _policy_digest(path: Path) -> str:
    """A digest of the network a checkpoint holds: an SB3 zip's ``policy.pth`` (its other entries differ
    between two saves of one model, e.g. their step counts), else the whole file. Reads bytes only, in
    chunks, and a member only within the loader's limits (a refusal names the file)."""
    digest = hashlib.sha256()
    if zipfile.is_zipfile(path):
        with open_zip(path, f"checkpoint {path}") as z:
            if "policy.pth" in z.namelist():
                unknown = Limits()  # the players' spaces are not known yet: the default ceiling
                for chunk in member_chunks(z, "policy.pth", unknown.file, unknown, f"SB3 model {path}"):
                    digest.update(chunk)
                return digest.hexdigest()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _distinct(files: list[Path], root: Path) -> list[Path]:
    """``files`` less the copies of one network: a run directory holds its last checkpoint twice
    (``checkpoints/step_N`` and ``final``), which would play as two players. The copy nearest the top
    of ``root`` is kept."""
    kept: dict[str, Path] = {}
    for f in sorted(files, key=lambda f: (len(f.relative_to(root).parts), f.as_posix())):
        first = kept.setdefault(_policy_digest(f), f)
        if first is not f:
            logger.warning(
                "round_robin: %s holds the same network as %s; it plays once, as %s",
                f.relative_to(root).as_posix(), first.relative_to(root).as_posix(),
                first.relative_to(root).with_suffix("").as_posix(),
            )
    return [f for f in files if f in kept.values()]


def _players(checkpoints: Any) -> tuple[list[str], list[Any]]:
    """Names and specs of the players from a directory, a sequence of paths/URIs or a name->spec mapping."""
    if isinstance(checkpoints, Mapping):
        return [str(k) for k in checkpoints], list(checkpoints.values())
    if isinstance(checkpoints, (str, os.PathLike)) and Path(checkpoints).is_dir():
        root = Path(checkpoints)
        files = _distinct(_checkpoint_files(root), root)
        if len(files) < 2:
            raise ValueError(
                f"a round robin needs at least 2 different checkpoints, but {root} holds "
                f"{[str(f) for f in files]}"
            )
        return [f.relative_to(root).with_suffix("").as_posix() for f in files], [str(f) for f in files]
    if isinstance(checkpoints, (str, os.PathLike)):
        raise ValueError(
            f"round_robin: {checkpoints!s} is not a directory; pass a directory or a list of checkpoints"
        )
    specs = list(checkpoints)
    names = [Path(str(s)).stem if isinstance(s, (str, os.PathLike)) else getattr(s, "name", type(s).__name__)
             for s in specs]
    if len(set(names)) != len(names):
        names = [
            str(s) if isinstance(s, (str, os.PathLike)) else f"{n}#{i}"
            for i, (n, s) in enumerate(zip(names, specs))
        ]
    return names, specs


def _play(
    env_fn: Callable[[], Any],
    learner: NPCPolicy,
    npc: NPCPolicy,
    episodes: int,
    num_envs: int,
    seed: int,
    env_kwargs: dict[str, Any],
    max_steps: int | None,
    observe: Callable[[int], None] | None,
) -> list[str]:
    """Outcomes (for ``learner``) of ``episodes`` episodes ``learner`` plays on the training side,
    or :class:`~npc_wrapper.errors.NoEpisodeEnds` once no episode has ended for ``max_steps`` vector
    steps. ``observe`` is called with this pairing's episodes played so far."""
    venv = make_vec_env(env_fn, num_envs=num_envs, npc=npc, seed=seed, **env_kwargs)
    try:
        learner.reset(venv.num_envs, seed)
        try:
            stats = play_episodes(
                policy_actor(learner, venv), venv, episodes, max_steps=max_steps, observe=observe
            )
        except NoEpisodeEnds as e:
            raise NoEpisodeEnds(
                f"round_robin: no episode ended in the last max_steps={e.steps} vector steps ({e.played} of "
                f"{episodes} played); give the env a time limit, or pass a larger max_steps",
                e.steps,
                e.played,
            ) from None
        return [episode["outcome"] for episode in stats.episodes]
    finally:
        venv.close()


def round_robin(
    checkpoints: str | os.PathLike[str] | Sequence[Any] | Mapping[str, Any],
    env_fn: Callable[[], Any],
    *,
    episodes: int = 10,
    num_envs: int = 4,
    training_agents_pct: float | None = 0.5,
    training_agents: Sequence[Any] | None = None,
    reset_when_training_agents_dead: bool = True,
    device: str | torch.device = "auto",
    deterministic: bool = False,
    trusted: bool = False,
    seed: int = 0,
    initial_elo: float = 1200.0,
    seat: str = "random",
    load: Callable[[Any, spaces.Space, spaces.Space], NPCPolicy] | None = None,
    print_table: bool = True,
    max_steps: int | None = None,
    observe: Callable[[int, int], None] | None = None,
) -> RoundRobinResult:
    """Play every checkpoint against every other one and rate them.

    Each ordered pair ``(a, b)`` plays ``episodes`` episodes with ``a`` driving the training agents
    and ``b`` the NPC agents, so every pair meets on both sides of the env. Ratings are fitted to
    all games at once (:func:`fit_ratings`), so the table does not depend on the order of play.

    :param checkpoints: a directory (its checkpoint files, searched recursively, e.g. a run
        directory), a sequence of checkpoint paths/URIs or policies, or a mapping name -> either
    :param env_fn: factory of the PettingZoo env (a symmetric game: see
        :func:`~npc_wrapper.league.checks.check_league_layout`); a turn-based one (``AECEnv``) is
        played with one learner seat, drawn per game with ``seat="random"``
    :param episodes: episodes per ordered pair
    :param num_envs: env copies played in parallel, each playing an equal share of the episodes
    :param training_agents_pct: fraction of agents on the first player's side
    :param training_agents: names or glob patterns of the first player's agents (overrides the fraction)
    :param reset_when_training_agents_dead: end an episode once the first player's agents are all dead
    :param device: where the policies run
    :param deterministic: players take their most likely action
    :param trusted: allow checkpoint formats that run code (pickles, TorchScript)
    :param seed: seed of the first pairing (pairing ``k`` uses ``seed + 1000 * k``)
    :param initial_elo: the rating scale's anchor
    :param load: ``load(spec, observation_space, action_space) -> NPCPolicy`` (default:
        :func:`~npc_wrapper.as_npc_policy`, which loads paths and URIs through the checkpoint loader)
    :param print_table: print the ranked table
    :param max_steps: vector steps without a counted episode end before a pairing is an error (an env
        whose episodes never end would otherwise hang; default
        :data:`~npc_wrapper.evaluation.MAX_EPISODE_STEPS`); a bound on episode length, not on the pairing
    :param seat: turn-based games: ``"random"`` (the first player's seat is drawn per game, so each
        pair meets in every seat) or ``"fixed"``
    :param observe: ``observe(done, total)``, called as episodes end with the episodes played so far over
        all pairings and their total (``n * (n - 1) * episodes``): for a progress display
    :return: the games and ratings; ``result.table()`` formats them
    """
    if not _is_int(episodes) or episodes < 1:
        raise ValueError(f"episodes must be an integer >= 1 (per ordered pair), got {episodes!r}")
    if max_steps is not None and (not _is_int(max_steps) or max_steps < 1):
        raise ValueError(f"max_steps must be an integer >= 1 (vector steps per pairing), got {max_steps!r}")
    names, specs = _players(checkpoints)
    if len(names) < 2:
        raise ValueError(f"a round robin needs at least 2 players, got {names}")
    probe = env_fn()
    turn_based = isinstance(probe, AECEnv)
    try:
        if turn_based:
            layout = build_turn_layout(probe, "random", training_agents_pct, training_agents, seat)
        else:
            layout = build_layout(probe, "random", training_agents_pct, training_agents)
        check_league_layout(
            layout, getattr(probe, "metadata", None), getattr(probe, "unwrapped", probe), round_robin=True
        )
    finally:
        probe.close()
    obs_space, act_space = layout.observation_space, layout.action_space
    if load is None:
        def load(spec: Any, o: spaces.Space, a: spaces.Space) -> NPCPolicy:
            return as_npc_policy(spec, o, a, device=device, deterministic=deterministic, trusted=trusted)
    players = []
    for name, spec in zip(names, specs):
        policy = load(spec, obs_space, act_space)
        if not isinstance(policy, NPCPolicy):
            raise ValueError(
                f"round_robin: {name!r} loaded as {type(policy).__name__}, not one policy; name one "
                "checkpoint file"
            )
        players.append(policy)
    n = len(players)
    wins, draws, losses = (np.zeros((n, n), dtype=np.int64) for _ in range(3))
    env_kwargs = {"training_agents_pct": training_agents_pct, "training_agents": training_agents,
                  "reset_when_training_agents_dead": reset_when_training_agents_dead, "device": device}
    if turn_based:
        env_kwargs["seat"] = seat
    k, total = 0, n * (n - 1) * episodes
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            outcomes = _play(
                env_fn, players[i], players[j], episodes, num_envs, seed + 1000 * k, env_kwargs, max_steps,
                None if observe is None else lambda done, before=k * episodes: observe(before + done, total),
            )
            for outcome in outcomes:
                if outcome == "win":
                    wins[i, j] += 1
                    losses[j, i] += 1
                elif outcome == "loss":
                    losses[i, j] += 1
                    wins[j, i] += 1
                else:
                    draws[i, j] += 1
                    draws[j, i] += 1
            k += 1
    score = wins + 0.5 * draws
    games = wins + draws + losses
    ratings = fit_ratings(score, games, initial_elo)
    result = RoundRobinResult(names, dict(zip(names, ratings.tolist())), score, games, wins, draws, losses)
    if print_table:
        print(result.table())
    return result
