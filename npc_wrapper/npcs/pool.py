"""NPC pools: several frozen policies for one group of NPC agents, one drawn per env per episode."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from npc_wrapper.npcs.policies import NPCPolicy

__all__ = ["NPCPool"]


class NPCPool:
    """A set of NPC policies for the same agents; each env draws one at each of its episode starts.

    Inference stays batched: one forward per distinct member over the rows it drives.

    :param members: the policies (same observation and action spaces)
    :param weights: sampling weights (uniform when omitted); normalised

    Example::

        >>> import numpy as np
        >>> from gymnasium import spaces
        >>> from npc_wrapper import ConstantPolicy, NPCPool, RandomPolicy
        >>> obs, act = spaces.Box(-1.0, 1.0, (2,)), spaces.Discrete(5)
        >>> pool = NPCPool([RandomPolicy(obs, act), ConstantPolicy(obs, act)], weights=[3, 1])
        >>> pool, pool.weights
        (NPCPool(['random', 'noop']), array([0.75, 0.25]))
        >>> pool.draw(np.random.default_rng(0), 6)  # one member per env starting an episode
        array([0, 0, 0, 0, 1, 1])
    """

    def __init__(self, members: Sequence[NPCPolicy], weights: Sequence[float] | None = None) -> None:
        if not members:
            raise ValueError("an NPC pool needs at least one policy")
        self.members: list[NPCPolicy] = list(members)
        self.weights = self._check_weights(weights)

    def _check_weights(self, weights: Sequence[float] | None) -> np.ndarray | None:
        if weights is None:
            return None
        w = np.asarray(weights, dtype=np.float64)
        with np.errstate(over="ignore"):  # a sum past the float range is refused below, not warned about
            total = w.sum()
        if w.shape != (len(self.members),) or not (w >= 0).all() or not 0 < total < np.inf:
            raise ValueError(
                f"pool weights must be {len(self.members)} non-negative numbers with a positive sum that is "
                f"finite (only their ratios count), got {list(weights)}"
            )
        return w / total

    def set_weights(self, weights: Sequence[float] | None) -> None:
        """Change the sampling weights (takes effect at the next episode starts)."""
        self.weights = self._check_weights(weights)

    def add(self, policy: NPCPolicy, weight: float | None = None) -> int:
        """Add a member (it plays from the next episode starts on); returns its index.

        :param weight: its sampling weight on the pool's normalised scale (the current weights sum
            to 1; ``0`` never draws it); default: the mean of the current weights
        """
        if weight is not None and not 0 <= weight < np.inf:
            raise ValueError(f"a pool member's weight must be a finite, non-negative number, got {weight!r}")
        n = len(self.members)
        current = self.weights if self.weights is not None else np.full(n, 1 / n)
        self.members.append(policy)
        if weight is not None or self.weights is not None:
            w = np.append(current, current.mean() if weight is None else weight)
            self.weights = w / w.sum()
        return len(self.members) - 1

    def remove(self, index: int) -> NPCPolicy:
        """Remove member ``index`` (later members shift down by one); returns it.

        This edits the pool alone: on a running env use its engine's
        :meth:`~npc_wrapper.engine.NPCEngine.remove_npc` (``venv.engine.remove_npc(index, group)``),
        which refuses members still playing and renumbers the envs' current members (the vector
        envs themselves have ``add_npc`` but no ``remove_npc``).
        """
        if len(self.members) == 1:
            raise ValueError("cannot remove the last member of an NPC pool")
        index = self.index(index)
        member = self.members.pop(index)
        if self.weights is not None:
            w = np.delete(self.weights, index)
            self.weights = w / w.sum() if w.sum() > 0 else None
        return member

    def index(self, index: int) -> int:
        """Member ``index`` read as a list reads it (negative counts from the end), range-checked."""
        n = len(self.members)
        if not -n <= index < n:
            raise IndexError(f"NPC pool member {index} does not exist: the pool has {n} members")
        return index % n

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Indices of ``n`` members drawn independently."""
        if len(self.members) == 1:
            return np.zeros(n, dtype=np.intp)
        return rng.choice(len(self.members), size=n, p=self.weights).astype(np.intp)

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"NPCPool({[m.name for m in self.members]})"
