"""The default run name says which side trains: ``simple_tag-adversary_0..2_<time>`` (the predators),
``simple_tag-agent_0_<time>`` (the prey).

``configs/config.yaml`` names a run ``${env.name}-${npc_training_side:}_${now:%Y%m%d-%H%M%S}``. The
``npc_training_side`` resolver builds the configured env once (per env config, per process) to read its
``possible_agents``, splits them as the run will (``trainer.dual_policy``), and abbreviates the training
agents with :func:`~npc_wrapper.agents.agent_ranges`; ``all`` when every agent trains. The result holds
only letters, digits and ``_.+-``, so it is safe in a path and a W&B name.
"""

from __future__ import annotations

import functools
import json
import re

from omegaconf import DictConfig, OmegaConf

from npc_wrapper.agents import agent_ranges, split_agents
from npc_wrapper.cli.envs import EnvFactory
from npc_wrapper.cli.errors import CLIError, one_line
from npc_wrapper.config import DualPolicyConfig

__all__ = ["RESOLVER", "training_side"]

#: The resolver's name in the configs.
RESOLVER = "npc_training_side"
#: Longest side label before it is shortened to its first run of agents.
_MAX_CHARS = 40
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


@functools.lru_cache(maxsize=32)
def _possible_agents(env_json: str) -> tuple[str, ...]:
    """The ``possible_agents`` of the env that ``env_json`` (``[factory, wrappers]``) configures."""
    factory, wrappers = json.loads(env_json)
    env_fn = EnvFactory(factory, wrappers)
    try:
        env = env_fn()
    except CLIError:
        raise
    except Exception as e:
        raise CLIError(
            f"cannot build env.factory ({factory.get('_target_')}) to name the run after its training "
            f"agents: {type(e).__name__}: {one_line(e)} (or name the run yourself: run=NAME)"
        ) from e
    try:
        return tuple(str(a) for a in env.possible_agents)
    finally:
        env.close()


def training_side(*, _root_: DictConfig) -> str:
    """The training agents of the run ``_root_`` configures, abbreviated for its name.

    :param _root_: the composed ``npc-train`` config (OmegaConf passes it to the resolver)
    :raises CLIError: when the env cannot be built or the split is invalid
    """
    env = [OmegaConf.to_container(_root_.env[k], resolve=True) for k in ("factory", "wrappers")]
    agents = _possible_agents(json.dumps(env, sort_keys=True, default=str))
    try:  # checked as npc-train checks it, so a bad value gets the same message here
        dp = DualPolicyConfig.from_dict(_root_.trainer.dual_policy, where="trainer.dual_policy")
    except ValueError as e:
        raise CLIError(str(e)) from e
    if not dp.enabled:
        return "all"
    try:
        train, npcs = split_agents(agents, dp.training_agents_pct, dp.training_agents)
    except (TypeError, ValueError) as e:
        raise CLIError(f"trainer.dual_policy: {one_line(e)}") from e
    if not npcs:
        return "all"
    side = agent_ranges(train)
    if len(side) > _MAX_CHARS:
        side = agent_ranges(train, most=1)[:_MAX_CHARS]
    return _UNSAFE.sub("-", side)
