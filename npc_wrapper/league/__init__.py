"""Self-play league: the NPC pool grows from the learner's own snapshots while it trains.

:class:`LeagueCallback` (:mod:`~npc_wrapper.league.callback`) is a Stable-Baselines3 callback that
freezes snapshots of the learner into the NPC pool and rates every member with Elo
(:mod:`~npc_wrapper.league.elo`); :func:`round_robin` (:mod:`~npc_wrapper.league.round_robin`)
plays saved checkpoints against each other and fits ratings to all the games at once. Both need a
symmetric game (:mod:`~npc_wrapper.league.checks`). The config is :class:`~npc_wrapper.LeagueConfig`.
"""

from __future__ import annotations

from npc_wrapper.config import SAMPLING_MODES, LeagueConfig
from npc_wrapper.errors import NoEpisodeEnds
from npc_wrapper.league.callback import LeagueCallback, MemberRecord
from npc_wrapper.league.checks import check_league_layout, check_league_venv
from npc_wrapper.league.elo import OUTCOME_SCORE, elo_expected, elo_update, fit_ratings
from npc_wrapper.league.round_robin import RoundRobinResult, round_robin

__all__ = [
    "LeagueConfig",
    "LeagueCallback",
    "MemberRecord",
    "SAMPLING_MODES",
    "OUTCOME_SCORE",
    "elo_expected",
    "elo_update",
    "check_league_layout",
    "check_league_venv",
    "round_robin",
    "RoundRobinResult",
    "fit_ratings",
    "NoEpisodeEnds",
]
