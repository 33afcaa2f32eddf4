"""Whether the league can run in an env: a symmetric game, and wrappers that leave observations alone.

The league (and a round robin) plays the learner's snapshots (or other checkpoints) as the NPC
agents, so those must be the learner's opponents with its observation and action spaces
(magent2 battle with ``training_agents=["red_*"]``, MettaGrid arena). :func:`check_league_layout`
refuses envs where they are not, saying why; :func:`check_wrappers` refuses VecEnv wrappers that
change what the learner observes (its snapshots see the NPCs' raw observations).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize, VecTransposeImage

from npc_wrapper.agents import AgentLayout
from npc_wrapper.engine import NPCEngine
from npc_wrapper.frontends.sb3 import SB3VecEnv

__all__ = ["check_league_layout", "check_league_venv", "check_wrappers", "find_npc_vec_env"]

# Envs (by metadata name, version suffix stripped) whose NPC agents are not the learner's
# opponents in a symmetric game, even when padding wrappers give every agent one space.
_NOT_SYMMETRIC = {
    "simple": "it has a single agent",
    "simple_spread": "it is cooperative: the NPC agents are the learner's teammates, there is no opponent",
    "simple_reference": "it is cooperative: the NPC agents are the learner's teammates, there is no opponent",
    "simple_speaker_listener": "it is cooperative and the speaker and listener play different roles",
    "pistonball": "it is cooperative: the NPC pistons are the learner's teammates, there is no opponent",
    "cooperative_pong": "it is cooperative: the NPC paddle is the learner's teammate, there is no opponent",
    "knights_archers_zombies": "it is cooperative (the opponents are the env's zombies, not agents)",
    "pursuit": "it is cooperative (the evaders are driven by the env, not agents)",
    "multiwalker": "it is cooperative: the NPC walkers are the learner's teammates",
    "waterworld": "it is cooperative: the NPC pursuers are the learner's teammates",
    "simple_tag": "predators and prey play different roles (their unpadded observation spaces differ)",
    "simple_adversary": "the adversary and the good agents play different roles",
    "simple_crypto": "eve, bob and alice play different roles",
    "simple_push": "the adversary and the agent play different roles",
    "simple_world_comm": "the adversaries and the good agents play different roles",
}


def _env_base_name(metadata: Mapping[str, Any] | None) -> str | None:
    name = (metadata or {}).get("name")
    return re.sub(r"_v\d+$", "", str(name)) if name else None


def check_league_layout(
    layout: AgentLayout,
    metadata: Mapping[str, Any] | None = None,
    raw_env: Any = None,
    *,
    round_robin: bool = False,
) -> None:
    """Raise ``ValueError`` unless the NPC agents can play the learner's snapshots as its opponents.

    :param layout: the agent split (training agents and NPC groups)
    :param metadata: the env's ``metadata``; its ``name`` is checked against envs known to be
        cooperative or role-asymmetric
    :param raw_env: the innermost PettingZoo env (``env.unwrapped``), to compare the agents' spaces
        before padding wrappers
    :param round_robin: word the errors for :func:`~npc_wrapper.league.round_robin` (which plays
        checkpoints against each other), not for the training league
    """
    train = list(layout.training)
    if round_robin:
        why = "a round robin plays one checkpoint as the training agents and another as the NPC agents, so"
        off = "or rate the checkpoints against a fixed NPC instead (npc-eval CHECKPOINT --npc URI)"
        not_for = (
            "A round robin cannot rate checkpoints of this env; evaluate each against a fixed NPC (npc-eval "
            "CHECKPOINT --npc URI) instead. A round robin is for"
        )
    else:
        why = "the league plays the learner's own snapshots as the NPC agents, so"
        off = "or turn trainer.league.enabled off"
        not_for = (
            "Turn trainer.league.enabled off for this env (train against a fixed NPC instead); "
            "the league is for"
        )
    if not layout.groups:
        raise ValueError(
            f"{why} it needs NPC agents, but every agent trains ({train}); lower training_agents_pct or name "
            f"the training agents with training_agents=[...], {off}"
        )
    if len(layout.groups) > 1:
        desc = "; ".join(f"{list(g.agents)} ({g.observation_space}, {g.action_space})" for g in layout.groups)
        raise ValueError(
            f"{why} the NPC agents must form one group with the learner's spaces, but they form "
            f"{len(layout.groups)} groups: {desc}; use one npc spec for all NPC agents and choose "
            f"training_agents so that the NPCs are the opposing team, {off}"
        )
    group = layout.groups[0]
    if group.observation_space != layout.observation_space or group.action_space != layout.action_space:
        raise ValueError(
            f"{why} the NPC agents must share the training agents' spaces, but they differ: training agents "
            f"{train} observe {layout.observation_space} and act in {layout.action_space}; NPC agents "
            f"{list(group.agents)} observe {group.observation_space} and act in {group.action_space}. This "
            "is not a symmetric game (e.g. simple_tag's predators vs prey): choose training_agents so that "
            f"both teams share spaces, {off}"
        )
    base = _env_base_name(metadata)
    if base in _NOT_SYMMETRIC:
        raise ValueError(
            f"{why} the NPC agents must be the learner's opponents in a symmetric game, but "
            f"{metadata['name']}: {_NOT_SYMMETRIC[base]}. {not_for} games like magent2 battle or MettaGrid "
            "arena"
        )
    if raw_env is not None:
        try:
            t = raw_env.observation_space(train[0]), raw_env.action_space(train[0])
            odd = [a for a in group.agents if (raw_env.observation_space(a), raw_env.action_space(a)) != t]
        except (AttributeError, KeyError, TypeError, NotImplementedError):  # no per-agent getters there
            odd = []
        if odd:
            raise ValueError(
                f"{why} the NPC agents must play the same role as the training agents, but before the env's "
                f"wrappers NPC agents {odd} have spaces ({raw_env.observation_space(odd[0])}, "
                f"{raw_env.action_space(odd[0])}) while training agent {train[0]!r} has {t}; padding made "
                "the spaces equal but the roles differ. Choose training_agents so that the NPCs are the "
                f"opposing team of the same kind, {off}"
            )


def _raw_env(engine: NPCEngine) -> Any:
    """The innermost PettingZoo env of sub-env 0 when it lives in this process (``None`` for workers)."""
    joints = getattr(engine.backend, "joints", None)
    if not joints:
        return None
    env = joints[0].env
    return getattr(env, "unwrapped", env)


def check_league_venv(venv: SB3VecEnv) -> None:
    """:func:`check_league_layout` for a built vector env (the spaces before wrappers too, in-process).

    :param venv: the env the learner trains in
    :raises ValueError: when the league cannot run there, saying why and what to change
    """
    engine = venv.engine
    check_league_layout(engine.layout, engine.metadata, _raw_env(engine))


def find_npc_vec_env(env: VecEnv, given: SB3VecEnv | None = None) -> tuple[SB3VecEnv, list[VecEnvWrapper]]:
    """The NPC env under the model's env ``env`` (or ``given``, which must be that one) and the wrappers."""
    wrappers: list[VecEnvWrapper] = []
    while isinstance(env, VecEnvWrapper):
        wrappers.append(env)
        env = env.venv
    if given is not None:
        if isinstance(env, SB3VecEnv) and env is not given:
            raise ValueError(
                "the league was given an SB3VecEnv (venv=...) that is not the one the model trains in; "
                "pass the model's env, or leave venv out to use it"
            )
        return given, wrappers
    if not isinstance(env, SB3VecEnv):
        raise ValueError(
            "the league needs the model's env to be an npc_wrapper SB3VecEnv (from "
            f"npc_wrapper.make_vec_env), got {type(env).__name__}"
        )
    return env, wrappers


def check_wrappers(wrappers: Sequence[VecEnvWrapper]) -> None:
    """Snapshots see the NPCs' raw observations, so wrappers may not change what the learner observes."""
    for w in wrappers:
        if isinstance(w, VecNormalize) and w.norm_obs:
            raise ValueError(
                "the league's snapshots act on the NPC agents' raw observations, but the learner is trained "
                "on VecNormalize-normalised observations; use VecNormalize(norm_obs=False) or no VecNormalize"
            )
        if isinstance(w, VecTransposeImage):
            continue  # SB3Policy transposes NPC images the same way
        if w.observation_space != w.venv.observation_space:
            raise ValueError(
                "the league's snapshots act on the NPC agents' raw observations, but "
                f"{type(w).__name__} changes the learner's observations ({w.venv.observation_space} -> "
                f"{w.observation_space}); remove that wrapper"
            )
