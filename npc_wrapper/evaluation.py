"""Playing episodes against the NPCs and summarising their outcomes.

:func:`play_episodes` is the one evaluation loop: ``npc-train``'s evaluations before and after
training, ``npc-eval``, and every pairing of :func:`~npc_wrapper.league.round_robin` play through
it. :class:`EpisodeStats` accumulates the ``info["npc_wrapper/episode"]`` summaries (win, loss or
draw of the training team against the NPC team) into rates with Wilson intervals and mean returns.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npc_wrapper.agents import SlotMap
from npc_wrapper.engine import EPISODE_KEY
from npc_wrapper.errors import NoEpisodeEnds
from npc_wrapper.npcs.policies import NPCPolicy
from npc_wrapper.turn_engine import NO_MOVE_KEY

__all__ = [
    "MAX_EPISODE_STEPS",
    "wilson_interval",
    "EpisodeStats",
    "episodes_from_infos",
    "play_episodes",
    "policy_actor",
    "format_summary",
]

#: Default bound on vector steps without an episode end when playing episodes (round robin, the CLI's
#: evaluations): far above common episode lengths (MettaGrid's 1000), and an env without one fails.
#: Read when :func:`play_episodes` is called, so patching it here changes every caller's bound.
MAX_EPISODE_STEPS = 10_000


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% for ``z=1.96``); ``(0, 1)`` when ``n == 0``.

    :param successes: number of successes
    :param n: number of trials
    :param z: standard-normal quantile of the confidence level
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The bounds are exactly 0 and 1 at p = 0 and p = 1; float rounding gives 0.9999999999999999.
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def episodes_from_infos(infos: Sequence[Mapping[str, Any]], slots: SlotMap) -> list[tuple[int, dict[str, Any]]]:
    """``(env index, episode summary)`` for each env whose episode ended in this step.

    The engine puts the same summary on every training slot of the env; the first slot is read.

    :param infos: SB3's per-slot infos of one step
    :param slots: the vector env's slots (``venv.slots``)
    """
    return [(e, info[EPISODE_KEY]) for e, info in enumerate(slots.first_of_env(infos)) if EPISODE_KEY in info]


def _npc_names(episode: Mapping[str, Any]) -> list[str]:
    npc = episode.get("npc")
    if npc is None:
        return []
    return [str(n) for n in npc] if isinstance(npc, (list, tuple)) else [str(npc)]


@dataclass
class EpisodeStats:
    """Outcomes of whole episodes (training team vs NPC team), optionally over a sliding window.

    :param window: keep only the last ``window`` episodes (``None``: all)
    """

    window: int | None = None
    episodes: deque = field(default_factory=deque)
    #: Turn-based games: episodes that ended before the learner's first move (not in the rates), and the
    #: learner's return in them.
    no_move_episodes: int = 0
    no_move_return: float = 0.0

    def __post_init__(self) -> None:
        self.episodes = deque(self.episodes, maxlen=self.window)

    def add(self, episode: Mapping[str, Any]) -> None:
        """Record one ``info["npc_wrapper/episode"]`` summary."""
        self.episodes.append(dict(episode))

    def extend(self, episodes: Iterable[Mapping[str, Any]]) -> None:
        for e in episodes:
            self.add(e)

    def __len__(self) -> int:
        return len(self.episodes)

    @staticmethod
    def _summarise(eps: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        n = len(eps)
        outcomes = [e.get("outcome") for e in eps]
        wins, losses, draws = (sum(o == k for o in outcomes) for k in ("win", "loss", "draw"))
        train = np.array([e["train_return"] for e in eps], dtype=np.float64)
        npc = np.array([e["npc_return"] for e in eps], dtype=np.float64)
        length = np.array([e["length"] for e in eps], dtype=np.float64)
        lo, hi = wilson_interval(wins, n)
        sem = lambda a: float(a.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        return {
            "episodes": n,
            "wins": wins,
            "losses": losses,
            "draws": draws,
            "win_rate": wins / n,
            "loss_rate": losses / n,
            "draw_rate": draws / n,
            "win_rate_ci_low": lo,
            "win_rate_ci_high": hi,
            "train_return": float(train.mean()),
            "train_return_sem": sem(train),
            "npc_return": float(npc.mean()),
            "npc_return_sem": sem(npc),
            "episode_length": float(length.mean()),
        }

    def add_no_move(self, no_move: Mapping[str, Any]) -> None:
        """Record one ``info["npc_wrapper/no_move"]``: episodes that ended before the learner moved."""
        self.no_move_episodes += int(no_move["episodes"])
        self.no_move_return += float(no_move["train_return"])

    def summary(self) -> dict[str, Any]:
        """Rates, mean returns and length over the recorded episodes, plus ``per_npc`` when a pool played,
        ``per_seat`` in turn-based games, and the episodes without a learner's move where there were any."""
        eps = list(self.episodes)
        out: dict[str, Any] = self._summarise(eps) if eps else {"episodes": 0}
        if eps:
            by_npc: dict[str, list[Mapping[str, Any]]] = {}
            for e in eps:
                by_npc.setdefault("+".join(_npc_names(e)) or "none", []).append(e)
            if len(by_npc) > 1:
                out["per_npc"] = {name: self._summarise(group) for name, group in sorted(by_npc.items())}
            by_seat: dict[str, list[Mapping[str, Any]]] = {}
            for e in eps:
                if "seat" in e:
                    by_seat.setdefault(str(e["seat"]), []).append(e)
            if by_seat:
                out["per_seat"] = {seat: self._summarise(group) for seat, group in sorted(by_seat.items())}
        if self.no_move_episodes:
            out["no_move_episodes"] = self.no_move_episodes
            out["no_move_return"] = self.no_move_return
        return out


def play_episodes(
    act: Callable[[np.ndarray, np.ndarray], np.ndarray],
    venv: Any,
    episodes: int,
    *,
    max_steps: int | None = None,
    observe: Callable[[int], None] | None = None,
) -> EpisodeStats:
    """Play ``venv`` with ``act(obs, episode_start) -> actions`` until ``episodes`` episodes ended.

    Each sub-env contributes a fixed quota of episodes (``episodes / num_envs``, the remainder to
    the first envs): the first episodes to end anywhere would over-represent short ones, and
    episode length often depends on who wins.

    ``episode_start`` is SB3's: slot ``k``'s observation is the first of a new episode, so a
    recurrent learner resets its state there. That is where slot ``k``'s env reset, not where slot
    ``k`` was last done: an agent that dies while its env plays on is done at its death, its slot
    is padding until the env resets, and its next real observation is the reset's.

    :param act: the learner: observations of every slot and whether each slot starts an episode
    :param venv: an :class:`~npc_wrapper.SB3VecEnv`, or a ``VecEnvWrapper`` of one (already seeded;
        reset here)
    :param episodes: how many episodes to record
    :param max_steps: give up when no episode has ended for this many vector steps (an env without
        a time limit); a bound on episode length, not on the whole evaluation (default
        :data:`MAX_EPISODE_STEPS`)
    :param observe: called with the episodes recorded so far after the reset and after every step (a
        progress bar; a video recorder renders the env there, except after the last step, whose env
        has already been reset)
    :raises NoEpisodeEnds: no counted episode ended for ``max_steps`` vector steps
    """
    slots = venv.slots
    n_envs = slots.num_envs
    quota = np.full(n_envs, episodes // n_envs)
    quota[: episodes % n_envs] += 1
    done_count = np.zeros(n_envs, dtype=np.int64)
    stats = EpisodeStats()
    obs = venv.reset()
    episode_start = np.ones(venv.num_envs, dtype=bool)
    limit = MAX_EPISODE_STEPS if max_steps is None else max_steps
    since_end = 0
    if observe is not None:
        observe(0)
    while not (done_count >= quota).all():
        if since_end >= limit:
            played = int(done_count.sum())
            raise NoEpisodeEnds(
                f"no episode ended in the last {limit} vector steps ({played} of {episodes} played): "
                "give the env a time limit",
                limit,
                played,
            )
        obs, _, _, infos = venv.step(act(obs, episode_start))
        for info in infos:
            if NO_MOVE_KEY in info:
                stats.add_no_move(info[NO_MOVE_KEY])
        reset = np.zeros(n_envs, dtype=bool)
        counted = False  # only a counted episode resets the bound: envs done with their share may end many
        for e, episode in episodes_from_infos(infos, slots):
            reset[e] = True
            if done_count[e] < quota[e]:
                stats.add(episode)
                done_count[e] += 1
                counted = True
        since_end = 0 if counted else since_end + 1
        episode_start = slots.per_slot(reset)
        if observe is not None:
            observe(int(done_count.sum()))
    return stats


def policy_actor(policy: NPCPolicy, venv: Any) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``act(obs, episode_start)`` for :func:`play_episodes` from an :class:`~npc_wrapper.NPCPolicy` playing
    every slot of ``venv`` (reset it for ``venv.num_envs`` rows first), given the slots' action masks
    where the env has them and the policy takes them."""
    rows = np.arange(venv.num_envs)

    def act(obs: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
        if policy.takes_mask and venv.engine.has_masks:
            return policy.act(obs, rows, episode_start, mask=venv.action_masks())
        return policy.act(obs, rows, episode_start)

    return act


def format_summary(summary: Mapping[str, Any], indent: str = "") -> str:
    """Human-readable lines for :meth:`EpisodeStats.summary`."""
    no_move = (
        [f"{indent}hands without a learner move: {summary['no_move_episodes']} "
         f"(learner return {summary['no_move_return']:.2f})"]
        if summary.get("no_move_episodes") else []
    )
    if not summary.get("episodes"):
        return "\n".join([f"{indent}no episode ended", *no_move])
    s = summary
    lines = [
        f"{indent}win rate {s['win_rate']:.3f} "
        f"(95% Wilson CI {s['win_rate_ci_low']:.3f}-{s['win_rate_ci_high']:.3f}) "
        f"over {s['episodes']} episodes: {s['wins']} wins, {s['losses']} losses, {s['draws']} draws",
        f"{indent}training-team return {s['train_return']:.2f} ± {s['train_return_sem']:.2f}, "
        f"NPC-team return {s['npc_return']:.2f} ± {s['npc_return_sem']:.2f} (mean ± s.e.), "
        f"episode length {s['episode_length']:.1f}",
    ]
    for name, sub in summary.get("per_npc", {}).items():
        lines.append(
            f"{indent}  vs {name}: win rate {sub['win_rate']:.3f} "
            f"({sub['win_rate_ci_low']:.3f}-{sub['win_rate_ci_high']:.3f}) over {sub['episodes']} episodes, "
            f"training-team return {sub['train_return']:.2f}"
        )
    for seat, sub in summary.get("per_seat", {}).items():
        lines.append(
            f"{indent}  as {seat}: win rate {sub['win_rate']:.3f} "
            f"({sub['win_rate_ci_low']:.3f}-{sub['win_rate_ci_high']:.3f}) over {sub['episodes']} episodes: "
            f"{sub['wins']} wins, {sub['losses']} losses, {sub['draws']} draws"
        )
    return "\n".join([*lines, *no_move])
