"""Action masks: where an env gives them, how wide they are, and how they are copied into buffers.

PettingZoo classic envs give each agent a ``Dict`` observation with an ``observation`` entry
(what a policy reads) and an ``action_mask`` entry (1 where an action is legal); other envs put the
mask in ``info["action_mask"]``. The wrapper serves the ``observation`` entry as the agent's
observation and keeps the mask in its own bool buffer, laid out as sb3-contrib's ``MaskablePPO``
takes it: one flag per action of a ``Discrete`` space, the flags of each dimension one after the
other for ``MultiDiscrete``, and two flags (0, 1) per entry of ``MultiBinary``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
from gymnasium import spaces

__all__ = [
    "MASK_KEY",
    "OBSERVATION_KEY",
    "ActionMask",
    "mask_width",
    "masked_observation_space",
    "served_observation_space",
]

#: Where a mask is found: the key of a classic ``Dict`` observation, and of an agent's info.
MASK_KEY = "action_mask"
#: The key of a classic ``Dict`` observation that holds what a policy reads.
OBSERVATION_KEY = "observation"


def mask_width(space: spaces.Space) -> int:
    """The number of flags in an action mask for ``space``, as sb3-contrib lays masks out.

    :param space: an agent's action space
    :raises ValueError: for spaces without discrete choices to mask (``Box``...)

    Example::

        >>> from gymnasium import spaces
        >>> from npc_wrapper.masks import mask_width
        >>> mask_width(spaces.Discrete(7)), mask_width(spaces.MultiDiscrete([3, 2]))
        (7, 5)
        >>> mask_width(spaces.MultiBinary(4))  # two flags (0 and 1) per entry
        8
    """
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(space.nvec.sum())
    if isinstance(space, spaces.MultiBinary):
        return 2 * int(np.prod(space.shape))
    raise ValueError(
        f"action space {space} has no discrete actions to mask; action masks need Discrete, MultiDiscrete "
        "or MultiBinary actions"
    )


def masked_observation_space(space: spaces.Space) -> spaces.Space | None:
    """The ``observation`` entry of a classic ``Dict(observation=..., action_mask=...)`` space, or
    ``None`` when ``space`` is not one (its mask, if any, is then in the agent's info).

    :raises ValueError: for a ``Dict`` with both keys and others besides (which one to serve is
        ambiguous)
    """
    if not isinstance(space, spaces.Dict) or not {MASK_KEY, OBSERVATION_KEY} <= space.spaces.keys():
        return None
    extra = sorted(str(k) for k in space.spaces if k not in (MASK_KEY, OBSERVATION_KEY))
    if extra:
        raise ValueError(
            f"observation space {space} has '{OBSERVATION_KEY}' and '{MASK_KEY}' entries and also {extra}; "
            f"npc_wrapper serves the '{OBSERVATION_KEY}' entry and reads the mask from '{MASK_KEY}': move "
            f"the other entries into '{OBSERVATION_KEY}' with a wrapper"
        )
    return space[OBSERVATION_KEY]


def served_observation_space(space: spaces.Space) -> spaces.Space:
    """What npc_wrapper serves for an agent whose observation space is ``space``: the ``observation``
    entry of a classic ``Dict(observation=..., action_mask=...)``, else ``space`` itself."""
    inner = masked_observation_space(space)
    return space if inner is None else inner


class ActionMask:
    """An action space's masks: copied from the env into bool buffers (shape checked), and checked in
    bulk for rows that allow no action.

    :param action_space: the agent's action space (fixes the mask's width)

    Example::

        >>> import numpy as np
        >>> from gymnasium import spaces
        >>> from npc_wrapper.masks import ActionMask
        >>> masks = np.zeros((2, 4), dtype=bool)
        >>> spec = ActionMask(spaces.Discrete(4))
        >>> spec.write(np.array([0, 1, 1, 0], np.int8), masks[0], "player_0")
        >>> masks[0]
        array([False,  True,  True, False])
        >>> spec.allows(masks[:1], np.array([1])), spec.sample(masks[:1], np.random.default_rng(0)) > 0
        (array([ True]), array([ True]))
        >>> spec.check(masks, ["player_0", "player_1"].__getitem__)
        Traceback (most recent call last):
        ...
        ValueError: the env gave agent 'player_1' an action mask that allows no action ...
    """

    def __init__(self, action_space: spaces.Space) -> None:
        self.width = mask_width(action_space)
        self.shape = (self.width,)
        self.action_space = action_space
        if isinstance(action_space, spaces.MultiDiscrete):
            sizes = action_space.nvec.ravel()
        elif isinstance(action_space, spaces.MultiBinary):
            sizes = np.full(int(np.prod(action_space.shape)), 2)
        else:
            sizes = np.array([self.width])
        # Each sub-action's first flag: every sub-action needs one legal choice.
        self._sizes = sizes.astype(np.intp)
        self._starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        self._single = len(sizes) == 1
        # The value of sub-action choice 0 (Discrete/MultiDiscrete ``start``; 0 for MultiBinary).
        self._offset = getattr(action_space, "start", 0)

    def write(self, mask: Any, out: np.ndarray, agent: Hashable) -> None:
        """Copy ``mask`` (any numeric or bool array, nonzero = legal) into ``out``.

        :param mask: the env's mask for an agent that must act now
        :param out: a bool buffer of shape ``(width,)``
        :param agent: named in errors
        :raises ValueError: when ``mask`` has another shape
        """
        m = mask if type(mask) is np.ndarray else np.asarray(mask)
        if m.shape != self.shape:
            raise ValueError(
                f"the env gave agent {agent!r} an action mask of shape {m.shape}; its action space "
                f"{self.action_space} needs shape {self.shape} (one flag per action)"
            )
        out[...] = m

    def legal(self, masks: np.ndarray) -> np.ndarray:
        """Per row of ``masks`` (``(n, width)`` bool), whether it allows an action (for every sub-action)."""
        if self._single:
            return masks.any(axis=1)
        return np.logical_or.reduceat(masks, self._starts, axis=1).all(axis=1)

    def sample(self, masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One uniformly random legal action per row of ``masks`` (``(n, width)`` bool, each row allowing
        an action for every sub-action), in the action space's shape and dtype."""
        scores = np.where(masks, rng.random(masks.shape), -1.0)
        if self._single:
            choice = scores.argmax(axis=1)
        else:  # a loop over the sub-actions (the action's dimensions), never over rows
            parts = [scores[:, a:a + k].argmax(axis=1) for a, k in zip(self._starts, self._sizes)]
            choice = np.stack(parts, axis=1)
        space = self.action_space
        return (choice.reshape(len(masks), *space.shape) + self._offset).astype(space.dtype)

    def allows(self, masks: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Per row, whether ``actions`` (``(n, *action_shape)``, in the space) is legal under ``masks``."""
        n = len(masks)
        flags = self._starts + (np.asarray(actions).reshape(n, -1) - self._offset)
        return masks[np.arange(n)[:, None], flags].all(axis=1)

    def check(self, masks: np.ndarray, agent_of: Callable[[int], Hashable]) -> None:
        """Raise ``ValueError`` naming the agent of the first row of ``masks`` that allows no action.

        :param masks: ``(n, width)`` bool, the masks of agents that must act now
        :param agent_of: row -> its agent (called only for the row named in the error)
        """
        bad = np.flatnonzero(~self.legal(masks))
        if len(bad):
            which = "no action" if self._single else "no action for some sub-action"
            raise ValueError(
                f"the env gave agent {agent_of(int(bad[0]))!r} an action mask that allows {which} "
                f"({masks[bad[0]].astype(int).tolist()}) while asking it to act: the env's bug (an agent to "
                "move must have a legal action); check how the env builds its masks"
            )
