"""The Stable-Baselines3 ``VecEnv`` front end: one slot per training agent per sub-env."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn, tile_images

from npc_wrapper.arguments import check_seed
from npc_wrapper.engine import NPCEngine
from npc_wrapper.frontends.base import FrontEnd

__all__ = ["SB3VecEnv"]


class SB3VecEnv(FrontEnd, VecEnv):
    """PettingZoo parallel envs with NPCs, as an SB3 ``VecEnv`` over the training agents only.

    Slot ``k`` is training agent ``k % n_train`` of sub-env ``k // n_train``. An env is reset
    automatically when its episode ends; a slot whose agent is done gets ``done=True`` with
    ``info["terminal_observation"]``, ``info["TimeLimit.truncated"]`` and SB3 Monitor's
    ``info["episode"]``. Dead agents' slots return zeros with ``info["npc_wrapper/padding"]``
    until their env resets.

    Where the env gives action masks, :meth:`action_masks` serves them (and ``env_method("action_masks")``
    / ``has_attr("action_masks")``, which sb3-contrib's ``get_action_masks`` / ``is_masking_supported``
    call), so ``MaskablePPO("MlpPolicy", venv)`` masks its actions directly.

    Build it with :func:`npc_wrapper.make_vec_env`. ``npc_wrapper.NPCVecEnv`` is its former name.

    Example::

        >>> import numpy as np
        >>> import npc_wrapper as nw
        >>> from mpe2 import simple_tag_v3
        >>> venv = nw.make_vec_env(lambda: simple_tag_v3.parallel_env(max_cycles=25), num_envs=2,
        ...                        npc="random", training_agents_pct=0.75, seed=0)
        >>> venv.num_envs, venv.num_sub_envs  # 2 PettingZoo envs x 3 training predators
        (6, 2)
        >>> obs = venv.reset()
        >>> obs, rewards, dones, infos = venv.step(np.zeros(6, dtype=np.int64))
        >>> rewards.dtype, dones.any(), infos[0]
        (dtype('float32'), np.False_, {'TimeLimit.truncated': False})
        >>> venv.close()

    :param engine: the shared engine that steps the sub-envs and runs the NPCs
    :param seed: the seed of the first ``reset()`` (see :meth:`seed`)
    """

    def __init__(self, engine: NPCEngine, seed: int | None = None) -> None:
        FrontEnd.__init__(self, engine)
        layout = engine.layout
        VecEnv.__init__(self, engine.slots.num_slots, engine.observation_space, layout.action_space)
        self.metadata = engine.metadata
        self.render_mode = engine.render_mode
        self._actions: np.ndarray | None = None
        if seed is not None:
            self.seed(seed)

    def reset(self) -> np.ndarray:
        """Reset every sub-env, with the seeds of :meth:`seed` and the options of ``set_options``
        (each sub-env takes its first slot's; they must be equal within a sub-env's slots)."""
        self._actions = None  # a step_async without its step_wait is abandoned, as the envs start anew
        seeds = self.slots.first_of_env(self._seeds)
        options = self.slots.one_per_env([o or None for o in self._options], "set_options")
        obs, infos = self.engine.reset(seeds, options)
        self.reset_infos = infos
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        if self._actions is not None:
            # The first call's actions would be replaced silently, and one step lost.
            raise RuntimeError(
                "step_async() was called twice without step_wait() in between: call step_wait() to finish "
                "the pending step first (or step(actions), which does both)"
            )
        self._actions = self.engine.validate_actions(actions)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() was called without step_async(actions)")
        actions, self._actions = self._actions, None  # taken even if the step fails
        result = self.engine.step(actions, validated=True)
        infos = result.infos
        # SB3's rule: a time-limit truncation only where the agent did not also terminate.
        for info, truncated in zip(infos, (result.truncated & ~result.terminated).tolist()):
            info["TimeLimit.truncated"] = truncated
        for k, ended in result.ended.items():
            infos[k]["terminal_observation"] = ended.final_obs
            infos[k]["episode"] = {"r": ended.ret, "l": ended.length, "t": ended.time}
        for k, info in result.reset_infos.items():
            self.reset_infos[k] = info
        return result.obs, result.reward.astype(np.float32), result.terminated | result.truncated, infos

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seed sub-env ``i`` with ``seed + i`` (and the NPCs with ``seed``) at the next ``reset()``."""
        if seed is None:
            seed = int(np.random.randint(0, np.iinfo(np.uint32).max, dtype=np.uint32))
        check_seed(seed)
        self._seeds = [seed + e for e in self.slots.env_of]
        return self._seeds

    def close(self) -> None:
        self.engine.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        """One image per slot: each sub-env is rendered once and its image given to each of its slots."""
        if self.render_mode != "rgb_array":
            warnings.warn(
                f"The render mode is {self.render_mode}, but this method assumes it is `rgb_array` "
                "to obtain images."
            )
            return [None] * self.num_envs
        return self._render_each(self._sub_envs(None))

    def render(self, mode: str | None = None) -> np.ndarray | None:
        """With ``render_mode="rgb_array"``, ``render("rgb_array")`` tiles one image per sub-env (not
        one per slot: a sub-env's slots share its image) with SB3's ``tile_images``, and
        ``render("human")`` shows that tiling with OpenCV, as SB3 does; other modes go through SB3's
        ``VecEnv.render``."""
        if self.render_mode == "rgb_array" and (mode or self.render_mode) in ("rgb_array", "human"):
            image = tile_images(self._render_each(range(self.engine.num_envs)))
            if mode != "human":
                return image
            import cv2  # SB3's own choice for showing rgb_array frames; only needed here

            cv2.imshow("vecenv", image[:, :, ::-1])
            cv2.waitKey(1)
            return None
        return super().render(mode)

    def action_masks(self) -> np.ndarray:
        """Every slot's legal actions now, bool ``(num_envs, width)`` (sb3-contrib's layout: one flag per
        action; per dimension, one after the other, for MultiDiscrete).

        :raises AttributeError: where the env gives no action masks
        """
        if not self.engine.has_masks:
            raise AttributeError(
                "this env gives no action masks (no 'action_mask' in its observations or infos): "
                "every action is allowed; train without masking (MaskablePPO: use_masking=False)"
            )
        return self.engine.action_masks()

    def _slot_indices(self, indices: VecEnvIndices) -> list[int]:
        """The slots of ``indices``; negative slots count from the end, as in a list."""
        n = self.num_envs
        slots = []
        for k in self._get_indices(indices):
            if not -n <= k < n:
                raise IndexError(
                    f"slot index {k} is out of range: there are {n} slots, so use {-n} <= index < {n}"
                )
            slots.append(int(k) % n)
        return slots

    def _sub_envs(self, indices: VecEnvIndices) -> list[int]:
        """The sub-env behind each slot of ``indices``."""
        return [self.slots.env(k) for k in self._slot_indices(indices)]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Attribute of the PettingZoo env behind each slot, from the outermost of its wrappers that has
        it (as ``get_wrapper_attr``); each sub-env is read once. ``"action_masks"`` is this vector env's
        own :meth:`action_masks` where the env gives masks (what ``has_attr`` asks for)."""
        if attr_name == "action_masks" and self.engine.has_masks:
            return [self.action_masks] * len(self._slot_indices(indices))
        return self._get_each(self._sub_envs(indices), attr_name)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute on the PettingZoo env behind each slot (each sub-env once), on the wrapper
        that owns it (as ``set_wrapper_attr``), or on the outermost if none does."""
        self._set_each(self._sub_envs(indices), attr_name, [value] * self.engine.num_envs)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call a method of the PettingZoo env behind each slot: once per sub-env, its result given to
        each of the sub-env's slots. ``"action_masks"`` gives each slot's row of :meth:`action_masks`
        where the env gives masks (what sb3-contrib's ``get_action_masks`` calls)."""
        if method_name == "action_masks" and self.engine.has_masks:
            masks = self.action_masks(*method_args, **method_kwargs)
            return [masks[k] for k in self._slot_indices(indices)]
        return self._call_each(self._sub_envs(indices), method_name, method_args, method_kwargs)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """Whether the env behind each slot, or an env it wraps, is a ``wrapper_class``.

        SB3's ``Monitor`` (and its subclasses) count as present: every slot already reports
        Monitor's ``info["episode"]``, which is what SB3 asks this for. ``evaluate_policy`` (and
        ``EvalCallback``) then read it, with each agent's own length (an answer of False would make them
        warn at every evaluation and count a dead agent's padding steps). ``VecMonitor`` is not needed
        on top; wrapped anyway, it warns once that its statistics replace the wrapper's, and they do.
        """
        envs = self._sub_envs(indices)
        if issubclass(wrapper_class, Monitor):
            return [True] * len(envs)
        backend = self.engine.backend
        return self.engine.for_envs(envs, lambda e: backend.is_wrapped(e, wrapper_class))
