"""Which SB3 algorithm ``trainer.algorithm`` names, and checks of its arguments before training."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from npc_wrapper.cli.errors import CLIError, one_line

__all__ = [
    "ALGORITHMS",
    "resolve_algorithm",
    "check_policy",
    "algorithm_kwargs",
    "ActionMaskVecEnv",
    "is_recurrent",
]

#: Short names accepted by ``trainer.algorithm``: ``module:Class``.
ALGORITHMS = {
    "PPO": "stable_baselines3:PPO",
    "A2C": "stable_baselines3:A2C",
    "DQN": "stable_baselines3:DQN",
    "RecurrentPPO": "sb3_contrib:RecurrentPPO",
    "MaskablePPO": "sb3_contrib:MaskablePPO",
    "TRPO": "sb3_contrib:TRPO",
    "QRDQN": "sb3_contrib:QRDQN",
}


def _import(spec: str, what: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        hint = " (pip install 'npc-wrapper[contrib]')" if module_name == "sb3_contrib" else ""
        raise CLIError(f"{what}={spec!r} cannot be imported: {one_line(e)}{hint}") from e
    try:
        obj: Any = module
        for name in attr.split("."):
            obj = getattr(obj, name)
    except AttributeError:
        raise CLIError(f"{what}={spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


def resolve_algorithm(name: str) -> type[BaseAlgorithm]:
    """The SB3 algorithm class for ``trainer.algorithm`` (a short name or ``pkg.module:Class``)."""
    spec = ALGORITHMS.get(name, name)
    if ":" not in spec:
        raise CLIError(
            f"trainer.algorithm={name!r} is not known: use one of {', '.join(ALGORITHMS)} "
            "or 'pkg.module:Class'"
        )
    cls = _import(spec, "trainer.algorithm")
    if not (isinstance(cls, type) and issubclass(cls, BaseAlgorithm)):
        raise CLIError(
            f"trainer.algorithm={name!r} is not a Stable-Baselines3 algorithm class (BaseAlgorithm subclass)"
        )
    return cls


def is_recurrent(algo: type[BaseAlgorithm]) -> bool:
    """Whether the algorithm's policies carry LSTM state (sb3-contrib ``RecurrentPPO``)."""
    return algo.__name__ == "RecurrentPPO"


def check_policy(algo: type[BaseAlgorithm], policy: str) -> str | type:
    """``trainer.policy`` as SB3 takes it: an alias of ``algo`` or an imported class."""
    aliases = getattr(algo, "policy_aliases", {})
    if policy in aliases:
        return policy
    if ":" in policy:
        return _import(policy, "trainer.policy")
    raise CLIError(
        f"trainer.policy={policy!r} is not a policy of {algo.__name__}: use one of {', '.join(aliases)} "
        "or 'pkg.module:Class'"
    )


def _resolve_classes(policy_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``activation_fn: torch.nn.ReLU`` and other ``*_class``/``*_fn`` strings become the objects they
    name."""
    out = dict(policy_kwargs)
    for key, value in policy_kwargs.items():
        if isinstance(value, str) and (key.endswith("_fn") or key.endswith("_class")):
            spec = value if ":" in value else ":".join(value.rsplit(".", 1))
            out[key] = _import(spec, f"trainer.policy_kwargs.{key}")
    return out


def algorithm_kwargs(
    algo: type[BaseAlgorithm], hyperparameters: Mapping[str, Any], policy_kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """Check ``trainer.hyperparameters`` against the algorithm's constructor; return the kwargs.

    :raises CLIError: on a key the constructor does not take, or one the CLI sets itself
    """
    params = inspect.signature(algo.__init__).parameters
    reserved = {"policy", "env", "seed", "device", "tensorboard_log", "verbose", "policy_kwargs"}
    taken = sorted(set(hyperparameters) & reserved)
    if taken:
        raise CLIError(
            f"trainer.hyperparameters sets {taken}, which npc-train sets itself: use trainer.policy, "
            "trainer.policy_kwargs, seed and device instead"
        )
    unknown = sorted(k for k in hyperparameters if k not in params)
    if unknown:
        valid = sorted(k for k in params if k not in reserved | {"self", "_init_setup_model"})
        raise CLIError(
            f"trainer.hyperparameters {unknown} are not arguments of {algo.__name__}; "
            f"valid: {', '.join(valid)}"
        )
    kwargs = dict(hyperparameters)
    if policy_kwargs:
        kwargs["policy_kwargs"] = _resolve_classes(policy_kwargs)
    return kwargs


class ActionMaskVecEnv(VecEnvWrapper):
    """Gives sb3-contrib ``MaskablePPO`` one action mask per slot, read from ``info[key]``.

    The mask for a slot's next action is the one in the info that came with its current
    observation: the step's info, or the reset info after an env reset. Slots whose env gives no
    mask (and padding slots of dead agents) allow every action.

    :param venv: the NPC vector env (``Discrete`` or ``MultiDiscrete`` actions)
    :param key: the info key holding the mask
    """

    def __init__(self, venv: VecEnv, key: str = "action_mask") -> None:
        super().__init__(venv)
        space = venv.action_space
        if isinstance(space, spaces.Discrete):
            width = int(space.n)
        elif isinstance(space, spaces.MultiDiscrete):
            width = int(space.nvec.sum())
        else:
            raise CLIError(
                f"MaskablePPO needs Discrete or MultiDiscrete actions, the env's training agents have {space}"
            )
        self.key = key
        self._masks = np.ones((venv.num_envs, width), dtype=bool)
        #: Whether any slot's info has carried a mask yet.
        self.seen_mask = False

    def _update(self, infos: list[dict[str, Any]], slots: Any = None) -> None:
        slots = range(len(infos)) if slots is None else slots
        for k in slots:
            mask = infos[k].get(self.key)
            if mask is None:
                self._masks[k] = True
            else:
                self._masks[k] = np.asarray(mask, dtype=bool).reshape(-1)
                self.seen_mask = True

    def reset(self) -> np.ndarray:
        obs = self.venv.reset()
        self._update(self.venv.reset_infos)
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        self._update(infos)
        done_slots = np.flatnonzero(dones)
        if len(done_slots):
            self._update(self.venv.reset_infos, done_slots)
        return obs, rewards, dones, infos

    def action_masks(self) -> np.ndarray:
        """The current mask of every slot, shape ``(num_envs, n_actions)``."""
        return self._masks.copy()

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        if method_name == "action_masks":
            return list(self._masks[self._get_indices(indices)])
        return self.venv.env_method(method_name, *method_args, indices=indices, **method_kwargs)

    def has_attr(self, attr_name: str) -> bool:
        return attr_name == "action_masks" or self.venv.has_attr(attr_name)
