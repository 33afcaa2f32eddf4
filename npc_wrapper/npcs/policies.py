"""NPC policies: frozen policies that act for NPC agents, one batch per call.

Every NPC the wrapper runs is an :class:`NPCPolicy`: scripted ones (:class:`RandomPolicy`,
:class:`ConstantPolicy`, :class:`CallablePolicy`) and adapters of a ``torch.nn.Module``
(:class:`TorchPolicy`) or a Stable-Baselines3 model (:class:`SB3Policy`), bound to the NPC agents'
observation and action spaces. :func:`check_npc_policy` dry-runs one on a batch so a mismatch fails
at construction. What a user passes as ``npc=`` becomes one in :mod:`npc_wrapper.npcs.resolve`;
nothing here loads checkpoints.

Rows: a policy acts for a fixed set of *rows* (one per NPC agent per sub-env, env-major). Each
call passes the observations of the live rows only, with their row indices, so a recurrent policy
can keep its state per row and reset it at that env's episode start.

Masks: where the env gives action masks, a policy with ``takes_mask = True`` also gets the rows'
masks, ``act(..., mask=...)`` (bool ``(n, width)``, laid out as :mod:`npc_wrapper.masks` says), and
acts legally: :class:`RandomPolicy` draws among the legal actions, :class:`TorchPolicy` and
:class:`SB3Policy` (sb3-contrib's MaskablePPO included) set illegal logits to ``-inf`` before sampling
or argmax, and a :class:`CallablePolicy` whose function has a ``mask`` parameter is called
``fn(obs, mask=mask)``. Policies without ``takes_mask`` (user subclasses implementing
``act(obs, rows, episode_start)``) are never passed one.
"""

from __future__ import annotations

import abc
import copy
import inspect
import io
import math
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common import distributions as d
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.vec_env import VecTransposeImage

from npc_wrapper.errors import NPCOutputError
from npc_wrapper.masks import ActionMask, mask_width
from npc_wrapper.npcs.device import DeviceRunner, resolve_device

__all__ = [
    "NPCPolicy",
    "RandomPolicy",
    "ConstantPolicy",
    "CallablePolicy",
    "TorchPolicy",
    "SB3Policy",
    "frozen_copy",
    "check_npc_policy",
    "observation_fits",
]


class NPCPolicy(abc.ABC):
    """A frozen policy acting for a batch of NPC rows.

    :param observation_space: observation space of one NPC agent
    :param action_space: action space of one NPC agent
    :param name: a short label reported in ``info["npc_wrapper/episode"]["npc"]``
    """

    #: Whether the policy keeps per-row state that must be reset at episode starts.
    recurrent: bool = False
    #: Whether :meth:`act` takes the rows' action masks as ``act(obs, rows, episode_start, mask=...)``
    #: (an opt-in: set it on a subclass whose ``act`` accepts ``mask=None``).
    takes_mask: bool = False

    def __init__(
        self, observation_space: spaces.Space, action_space: spaces.Space, name: str = "npc"
    ) -> None:
        self.observation_space = observation_space
        self.action_space = action_space
        self.name = name
        self.num_rows = 0

    def reset(self, num_rows: int, seed: int | None = None) -> None:
        """(Re)allocate per-row state for ``num_rows`` rows and seed the policy's own RNG."""
        self.num_rows = num_rows

    @abc.abstractmethod
    def act(self, obs: np.ndarray, rows: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
        """Return one action per row.

        :param obs: observations of the given rows, shape ``(len(rows), *obs_shape)``; a view of the
            wrapper's reused buffers, valid during the call (copy it to keep it)
        :param rows: indices of the rows acting now (live NPC agents), ascending
        :param episode_start: for each given row, whether this is the first step of its episode
        :return: actions, shape ``(len(rows), *action_shape)``, in ``action_space``
        """

    def act_async(
        self, obs: np.ndarray, rows: np.ndarray, episode_start: np.ndarray, mask: np.ndarray | None = None
    ) -> Callable[[], np.ndarray]:
        """Start computing :meth:`act`; return a function that waits for the actions.

        The engine launches this as soon as a step's observations exist and waits only when the
        trainer's next actions arrive; GPU policies overlap the two. The default is synchronous.

        :param mask: the rows' action masks, given only to a policy with ``takes_mask``
        """
        if mask is None:
            actions = self.act(obs, rows, episode_start)
        else:
            actions = self.act(obs, rows, episode_start, mask=mask)  # type: ignore[call-arg]
        return lambda: actions

    def __repr__(self) -> str:
        name, obs, act = type(self).__name__, self.observation_space, self.action_space
        return f"{name}(name={self.name!r}, obs={obs}, act={act})"


def _sample_space(space: spaces.Space, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform samples of ``space`` drawn with array ops (``space.sample()`` per row is slow)."""
    if isinstance(space, spaces.Discrete):
        return rng.integers(space.start, space.start + space.n, size=n, dtype=space.dtype)
    if isinstance(space, spaces.MultiDiscrete):
        return (space.start + rng.integers(0, space.nvec, size=(n, *space.nvec.shape))).astype(space.dtype)
    if isinstance(space, spaces.MultiBinary):
        return rng.integers(0, 2, size=(n, *space.shape), dtype=space.dtype)
    if isinstance(space, spaces.Box) and space.is_bounded("both"):
        if np.issubdtype(space.dtype, np.integer):
            drawn = rng.integers(space.low, space.high, size=(n, *space.shape), endpoint=True)
            return drawn.astype(space.dtype)
        return rng.uniform(space.low, space.high, size=(n, *space.shape)).astype(space.dtype)
    space.seed(int(rng.integers(2**31)))
    return np.stack([np.asarray(space.sample()) for _ in range(n)]) if n else np.zeros((0, *space.shape))


class RandomPolicy(NPCPolicy):
    """Uniformly random actions over the action space, or over the legal actions where the env gives
    masks (the ``npc="random"`` baseline)."""

    takes_mask = True

    def __init__(
        self, observation_space: spaces.Space, action_space: spaces.Space, name: str = "random"
    ) -> None:
        super().__init__(observation_space, action_space, name)
        self._rng = np.random.default_rng()
        self._masks = ActionMask(action_space) if _maskable(action_space) else None

    def reset(self, num_rows: int, seed: int | None = None) -> None:
        super().reset(num_rows, seed)
        self._rng = np.random.default_rng(seed)

    def act(
        self, obs: np.ndarray, rows: np.ndarray, episode_start: np.ndarray, mask: np.ndarray | None = None
    ) -> np.ndarray:
        if mask is None or self._masks is None:
            return _sample_space(self.action_space, len(rows), self._rng)
        return self._masks.sample(mask, self._rng)


class ConstantPolicy(NPCPolicy):
    """Always the same action (``"noop"`` NPCs: an agent that stands still).

    :param action: the action every row takes; defaults to the space's zero action
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        action: Any = None,
        name: str = "noop",
    ) -> None:
        super().__init__(observation_space, action_space, name)
        if action is None:
            action = np.zeros(action_space.shape, dtype=action_space.dtype)
            if isinstance(action_space, spaces.Discrete):
                action = action_space.start
        self._action = np.asarray(action, dtype=action_space.dtype)
        if not action_space.contains(self._action if self._action.ndim else self._action.item()):
            raise ValueError(f"noop action {action!r} is not in the NPC action space {action_space}")

    def act(self, obs: np.ndarray, rows: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self._action, (len(rows), *self._action.shape))


class CallablePolicy(NPCPolicy):
    """A plain function ``obs_batch -> actions`` (a scripted bot).

    :param fn: called with the observations of the live rows, shape ``(n, *obs_shape)``;
        returns ``n`` actions. A function with a parameter named ``mask`` takes masks: it is called
        ``fn(obs, mask=mask)`` with the rows' legal actions (bool ``(n, width)``; ``None`` where the
        env gives no masks)

    Example::

        >>> import numpy as np
        >>> from gymnasium import spaces
        >>> from npc_wrapper import CallablePolicy
        >>> toward = CallablePolicy(lambda obs: (obs[:, 0] > 0).astype(np.int64),
        ...                         spaces.Box(-1.0, 1.0, (2,)), spaces.Discrete(2), name="toward")
        >>> toward.act(np.array([[0.5, 0.0], [-0.5, 0.0]]), rows=np.arange(2), episode_start=np.ones(2, bool))
        array([1, 0])
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], Any],
        observation_space: spaces.Space,
        action_space: spaces.Space,
        name: str | None = None,
    ) -> None:
        super().__init__(observation_space, action_space, name or getattr(fn, "__name__", "callable"))
        self.fn = fn
        self.takes_mask = _has_parameter(fn, "mask")

    def act(
        self, obs: np.ndarray, rows: np.ndarray, episode_start: np.ndarray, mask: np.ndarray | None = None
    ) -> np.ndarray:
        return np.asarray(self.fn(obs, mask=mask) if self.takes_mask else self.fn(obs))


def _has_parameter(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn``'s signature has a parameter ``name`` (``False`` where it has no signature)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and some C callables
        return False


def _maskable(space: spaces.Space) -> bool:
    return isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary))


def _masked_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Categorical logits (concatenated for MultiDiscrete, as masks are) with illegal ones at ``-inf``."""
    return logits if mask is None else logits.masked_fill(~mask, float("-inf"))


def _masked_bernoulli(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Bernoulli logits ``(B, n)`` forced where a mask (two flags per entry: 0 legal, 1 legal) allows
    one value only: ``-inf`` where 1 is illegal, ``+inf`` where 0 is."""
    if mask is None:
        return logits
    return logits.masked_fill(~mask[:, 1::2], float("-inf")).masked_fill(~mask[:, 0::2], float("inf"))


def frozen_copy(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A copy of ``module`` on ``device`` in eval mode without gradients; ``module`` is left as it was.

    NPCs are snapshots: the caller may keep training the model it passed as ``npc=``. The copy
    goes through an in-memory ``torch.save``/``load`` of the caller's own live object (no
    checkpoint file is involved), because ``copy.deepcopy`` fails on modules that cache
    non-leaf tensors, as trained SB3 policies do in their action distribution.
    """
    buf = io.BytesIO()
    if isinstance(module, torch.jit.ScriptModule):
        torch.jit.save(module, buf)
        buf.seek(0)
        clone = torch.jit.load(buf, map_location=device)
    else:
        try:
            torch.save(module, buf)
            buf.seek(0)
            clone = torch.load(buf, map_location=device, weights_only=False)
        except (pickle.PicklingError, TypeError, AttributeError):  # unpicklable attributes
            with torch.no_grad():
                clone = copy.deepcopy(module).to(device)
        if getattr(clone, "optimizer", None) is not None:
            clone.optimizer = None  # an NPC never learns; drop the optimizer's moments
    for p in clone.parameters():
        p.requires_grad_(False)  # parameter by parameter: TorchScript modules lack requires_grad_
    return clone.eval()


def _sample_logits(logits: torch.Tensor, deterministic: bool, generator: torch.Generator) -> torch.Tensor:
    """Sample (or argmax) categorical actions from ``(..., n)`` logits with the policy's own RNG."""
    if deterministic:
        return logits.argmax(dim=-1)
    # Gumbel-max: argmax(logits + g) with g = -log(-log(u)), built in place.
    u = torch.rand(logits.shape, generator=generator, device=logits.device)
    return (logits - u.clamp_(1e-20, 1.0).log_().neg_().log_()).argmax(dim=-1)


def _split_logits(logits: torch.Tensor, nvec: np.ndarray) -> list[torch.Tensor]:
    return list(torch.split(logits, [int(n) for n in nvec.ravel()], dim=-1))


def _logit_faults(logits: torch.Tensor, nvec: np.ndarray | None = None) -> torch.Tensor:
    """Per row of categorical logits ``(B, n)`` (``(B, sum(nvec))`` for several categoricals): 0 where it
    can be sampled from, NaN where a logit is NaN or +inf, or every logit (of one categorical) is -inf,
    which Gumbel-max would silently turn into action 0. A -inf alone is legal (an action the network
    rules out). Read on the network's raw output, before any action mask: a row a mask empties is not
    the network's fault. (``amax`` propagates NaN; ``inf * 0`` is NaN.)"""
    if nvec is None:
        return logits.amax(dim=-1) * 0
    return torch.stack([p.amax(dim=-1) for p in _split_logits(logits, nvec)], dim=-1).sum(dim=-1) * 0


def _bernoulli_faults(logits: torch.Tensor) -> torch.Tensor:
    """Per row of Bernoulli logits ``(B, ...)``: 0, or NaN where one is NaN (an infinite logit is a
    certainty, not a fault; ``clamp`` keeps NaN and makes infinities finite)."""
    return logits.clamp(-1e30, 1e30).reshape(len(logits), -1).sum(dim=-1) * 0


def _with_faults(actions: torch.Tensor, faults: torch.Tensor) -> torch.Tensor:
    """Integer ``actions`` ``(B, ...)`` as float64 (exact up to 2**53), NaN in the rows whose ``faults``
    (:func:`_logit_faults`) are NaN: sampling loses the NaN of a diverged network, this puts it back.
    The NaN travels with the actions in the one copy to the host (inside the CUDA graph, when one is
    captured), so the check adds no synchronisation; :func:`_checked_actions` reads it."""
    return actions.to(torch.float64) + faults.reshape(len(faults), *[1] * (actions.ndim - 1))


def _checked_actions(actions: np.ndarray, space: spaces.Space, policy: NPCPolicy) -> np.ndarray:
    """A batch of actions from the device (``(B, *space.shape)``, float where sampled), or an
    :class:`NPCOutputError` naming ``policy`` and the rows that are NaN; integer spaces' actions are cast
    back to the space's dtype."""
    if actions.dtype.kind != "f":
        return actions
    if np.isnan(actions).any():
        bad = np.flatnonzero(np.isnan(actions.reshape(len(actions), -1)).any(axis=1))
        raise NPCOutputError(
            f"NPC policy {policy!r} gave NaN or infinite network output for {len(bad)} of its {len(actions)} "
            "rows, which it cannot act on (a diverged network?); retrain it, or load an earlier checkpoint",
            bad.tolist(),
        )
    integer = isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary))
    return actions.astype(space.dtype) if integer else actions


class TorchPolicy(NPCPolicy):
    """A ``torch.nn.Module`` mapping an observation batch to logits or actions.

    How the module's output is read, by NPC action space:

    * ``Discrete(n)``: float ``(B, n)`` are logits (sampled, or argmax when ``deterministic``);
      integer ``(B,)`` are actions.
    * ``MultiDiscrete(nvec)``: float ``(B, sum(nvec))`` are concatenated logits; integer
      ``(B, len(nvec))`` are actions.
    * ``MultiBinary(n)``: float ``(B, n)`` are Bernoulli logits; integer are actions.
    * ``Box``: ``(B, *shape)`` are actions, clipped to the bounds as SB3 does.

    Any other output (a float output of another width, say) is a ``ValueError`` naming its shape
    and dtype, raised by the dry run when the NPC is built.

    The module is moved to ``device``, put in eval mode and frozen. uint8 observations reach it
    as uint8 tensors (convert inside the module); others as float32.

    :param module: the network
    :param device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``...
    :param deterministic: argmax instead of sampling
    :param cuda_graphs: replay each NPC step (copies, forward and sampling) from CUDA graphs, one
        per batch-size bucket (CUDA only; the module must be free of host syncs and data-dependent
        shapes)

    Example::

        >>> import numpy as np
        >>> import torch
        >>> from gymnasium import spaces
        >>> from npc_wrapper import TorchPolicy
        >>> net = torch.nn.Linear(4, 3)  # an observation -> 3 action logits
        >>> npc = TorchPolicy(net, spaces.Box(-1.0, 1.0, (4,)), spaces.Discrete(3), device="cpu")
        >>> npc.reset(num_rows=8, seed=0)  # 8 NPC rows (e.g. 4 envs x 2 NPCs), seeded sampling
        >>> actions = npc.act(np.zeros((3, 4), np.float32), rows=np.array([0, 5, 7]),
        ...                   episode_start=np.zeros(3, bool))  # the 3 live rows only
        >>> actions.shape, actions.dtype, bool(((actions >= 0) & (actions < 3)).all())
        ((3,), dtype('int64'), True)
    """

    #: Masks act on the logits; a module that outputs actions has them checked by the engine.
    takes_mask = True

    def __init__(
        self,
        module: torch.nn.Module,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: str | torch.device = "auto",
        deterministic: bool = False,
        name: str | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__(observation_space, action_space, name or type(module).__name__)
        self.device = resolve_device(device)
        self.module = frozen_copy(module, self.device)
        self.deterministic = deterministic
        self._generator = torch.Generator(device=self.device)
        self.runner = DeviceRunner(self.device, cuda_graphs, self._generator)

    def reset(self, num_rows: int, seed: int | None = None) -> None:
        super().reset(num_rows, seed)
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The module's raw output for an observation tensor already on the device."""
        out = self.module(obs)
        return out[0] if isinstance(out, (tuple, list)) else out

    def act(
        self, obs: np.ndarray, rows: np.ndarray, episode_start: np.ndarray, mask: np.ndarray | None = None
    ) -> np.ndarray:
        return self.act_async(obs, rows, episode_start, mask)()

    def act_async(
        self, obs: np.ndarray, rows: np.ndarray, episode_start: np.ndarray, mask: np.ndarray | None = None
    ) -> Callable[[], np.ndarray]:
        wait = self.runner.run(self.forward, obs, self._to_actions, mask)
        return lambda: _checked_actions(wait(), self.action_space, self)

    def _to_actions(self, out: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The module's output as actions, legal under ``mask`` where given (NaN in the rows it gives no
        usable output for)."""
        space = self.action_space
        floating = out.is_floating_point()
        integer = not floating and not out.is_complex() and out.dtype != torch.bool
        if isinstance(space, spaces.Discrete):
            if floating and out.ndim == 2 and out.shape[1] == space.n:
                actions = _sample_logits(_masked_logits(out, mask), self.deterministic, self._generator)
                return _with_faults(actions + space.start, _logit_faults(out))
            if integer and (out.ndim == 1 or out.ndim == 2 and out.shape[1] == 1):
                return out.reshape(-1).long()
            raise self._bad_output(out, f"float logits (B, {space.n}) or integer actions (B,)")
        if isinstance(space, spaces.MultiDiscrete):
            n_logits = int(space.nvec.sum())
            if floating and out.ndim == 2 and out.shape[1] == n_logits:
                parts = _split_logits(_masked_logits(out, mask), space.nvec)
                acts = torch.stack(
                    [_sample_logits(p, self.deterministic, self._generator) for p in parts], dim=-1
                )
                actions = acts.reshape(-1, *space.shape) + torch.as_tensor(space.start, device=out.device)
                return _with_faults(actions, _logit_faults(out, space.nvec))
            if integer and tuple(out.shape[1:]) == space.shape:
                return out.long()
            shape = ", ".join(map(str, space.shape))
            raise self._bad_output(out, f"float logits (B, {n_logits}) or integer actions (B, {shape})")
        if isinstance(space, spaces.MultiBinary):
            if tuple(out.shape[1:]) != space.shape or out.is_complex():
                shape = ", ".join(map(str, space.shape))
                raise self._bad_output(out, f"float logits or integer/bool actions, both (B, {shape})")
            if not floating:
                return out.to(torch.int8)
            faults = _bernoulli_faults(out)  # of the network's output, before the mask
            out = _masked_bernoulli(out.reshape(len(out), -1), mask).reshape(out.shape)
            if self.deterministic:
                return _with_faults((out > 0).to(torch.int8), faults)
            u = torch.rand(out.shape, generator=self._generator, device=out.device)
            return _with_faults((u < torch.sigmoid(out)).to(torch.int8), faults)
        if isinstance(space, spaces.Box):
            if out.ndim == 0 or math.prod(out.shape[1:]) != math.prod(space.shape):
                shape = ", ".join(map(str, space.shape))
                raise self._bad_output(out, f"actions (B, {shape})")
            low = torch.as_tensor(space.low, device=out.device, dtype=out.dtype)
            high = torch.as_tensor(space.high, device=out.device, dtype=out.dtype)
            return torch.clamp(out.reshape(-1, *space.shape), low, high)  # NaN stays NaN
        raise TypeError(
            f"TorchPolicy does not support the action space {space}; wrap the module in an NPCPolicy"
        )

    def _bad_output(self, out: torch.Tensor, expected: str) -> ValueError:
        # A float output of another width must not be truncated to integer actions.
        return ValueError(
            f"the module's output has shape {tuple(out.shape)} and dtype {out.dtype}, but action space "
            f"{self.action_space} needs {expected}"
        )


class SB3Policy(NPCPolicy):
    """A Stable-Baselines3 model or policy (anything with SB3's ``predict``) as an NPC.

    Feed-forward SB3 actor-critic policies (and sb3-contrib's ``MaskablePPO`` policies) are run through
    their action network and sampled with the NPC's own seeded generator, so NPC behaviour is
    reproducible from ``reset(seed=...)``; they take action masks (illegal logits set to ``-inf``).
    Recurrent models (sb3-contrib ``RecurrentPPO``) keep their LSTM state per row and reset it at
    each row's episode start. Any other object with ``predict(obs, state, episode_start,
    deterministic)`` is called through ``predict``.

    :param model: an SB3 ``BaseAlgorithm``, ``BasePolicy``, or an object with SB3's ``predict``
    :param device: where the policy runs (``"auto"``: CUDA when available)
    :param deterministic: passed to ``predict`` / argmax instead of sampling
    :param cuda_graphs: replay each NPC step (copies, network and sampling) from CUDA graphs, one
        per batch-size bucket (CUDA only; Categorical, MultiCategorical, Bernoulli and DiagGaussian
        action distributions)
    """

    def __init__(
        self,
        model: Any,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: str | torch.device = "auto",
        deterministic: bool = False,
        name: str | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__(observation_space, action_space, name or type(model).__name__)
        self.device = resolve_device(device)
        self.deterministic = deterministic
        self.policy = getattr(model, "policy", model)
        if isinstance(self.policy, torch.nn.Module):
            self.policy = frozen_copy(self.policy, self.device)
        self.predictor = self.policy if hasattr(self.policy, "predict") else model
        _check_model_spaces(self.policy, observation_space, action_space)
        self.recurrent = hasattr(self.policy, "lstm_actor")
        # MaskablePPO's policies share the actor-critic network layout; their distributions are
        # categorical (logits), sampled as SB3's with the mask applied to the logits.
        maskable = _is_maskable_actor_critic(self.policy)
        # Plain actor-critic policies are sampled from their distribution with our own generator.
        self._direct = maskable or (
            not self.recurrent
            and isinstance(self.policy, ActorCriticPolicy)
            and type(self.policy).get_distribution is ActorCriticPolicy.get_distribution
        )
        # forward() gives the network's output alone (logits or Gaussian means) and _sample() draws
        # from it with our generator, both capturable in one CUDA graph. gSDE and custom
        # distributions need SB3's own distribution objects.
        self._split = maskable or (
            self._direct
            and type(self.policy)._get_action_dist_from_latent
            is ActorCriticPolicy._get_action_dist_from_latent
            and isinstance(self.policy.action_dist, _SPLIT_DISTRIBUTIONS)
        )
        # Masks act on the logits, which only the split path sees.
        self.takes_mask = self._split and _maskable(action_space)
        if cuda_graphs and not self._split:
            raise ValueError(
                f"cuda_graphs=True needs an SB3 actor-critic policy with a Categorical, MultiCategorical, "
                f"Bernoulli or DiagGaussian action distribution; {type(self.policy).__name__} "
                f"({type(getattr(self.policy, 'action_dist', None)).__name__}) cannot be captured: "
                f"pass cuda_graphs=False"
            )
        self._generator = torch.Generator(device=self.device)
        self._state: tuple[np.ndarray, ...] | None = None
        self._predict_seeds = np.random.default_rng()  # seeds SB3 predict calls (see _predict)
        self.runner = DeviceRunner(self.device, cuda_graphs, self._generator)
        # SB3 trains image policies channel-first (VecTransposeImage); PettingZoo envs give HWC.
        model_shape = getattr(getattr(self.policy, "observation_space", None), "shape", None)
        self._to_chw = (
            self._direct
            and is_image_space(self.policy.observation_space, check_channels=False)
            and len(observation_space.shape) == 3
            and model_shape != observation_space.shape
            and model_shape == (observation_space.shape[2], *observation_space.shape[:2])
        )

    def reset(self, num_rows: int, seed: int | None = None) -> None:
        super().reset(num_rows, seed)
        self._state = None
        self._predict_seeds = np.random.default_rng(seed)
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)

    def _predict(self, obs: np.ndarray, state: Any, episode_start: np.ndarray) -> tuple[Any, Any]:
        """SB3's ``predict``, which samples with torch's global RNG: run it under a seed drawn from this
        NPC's own stream, so its actions follow ``reset(seed=...)`` and the caller's RNG is untouched."""
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            seed = int(self._predict_seeds.integers(2**63 - 1))
            torch.default_generator.manual_seed(seed)
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
            return self.predictor.predict(obs, state, episode_start, self.deterministic)

    def act(
        self, obs: np.ndarray, rows: np.ndarray, episode_start: np.ndarray, mask: np.ndarray | None = None
    ) -> np.ndarray:
        if self._direct:
            return self.act_async(obs, rows, episode_start, mask)()
        if not self.recurrent:
            actions, _ = self._predict(obs, None, episode_start)
            return self._in_bounds(np.asarray(actions))
        state = None if self._state is None else tuple(s[:, rows] for s in self._state)
        actions, new_state = self._predict(obs, state, episode_start)
        if self._state is None:
            self._state = tuple(
                np.zeros((s.shape[0], self.num_rows, *s.shape[2:]), s.dtype) for s in new_state
            )
        for full, new in zip(self._state, new_state):
            full[:, rows] = new
        return self._in_bounds(np.asarray(actions))

    def _in_bounds(self, actions: np.ndarray) -> np.ndarray:
        """Box actions clipped to the bounds: SB3's unscaling of squashed (tanh) actions can land one
        float32 step past them (a SAC actor at saturation), which the env, and the engine, refuse."""
        space = self.action_space
        return np.clip(actions, space.low, space.high) if isinstance(space, spaces.Box) else actions

    def act_async(
        self, obs: np.ndarray, rows: np.ndarray, episode_start: np.ndarray, mask: np.ndarray | None = None
    ) -> Callable[[], np.ndarray]:
        if not self._direct:
            return super().act_async(obs, rows, episode_start)
        if self._split:
            wait = self.runner.run(self.forward, obs, self._sample, mask if self.takes_mask else None)
        else:
            wait = self.runner.run(self._sample_distribution, obs)
        space = self.policy.action_space

        def actions() -> np.ndarray:
            a = _checked_actions(wait().reshape((-1, *space.shape)), space, self)
            if isinstance(space, spaces.Box) and self.policy.squash_output:
                a = self.policy.unscale_action(a)
            return self._in_bounds(a)

        return actions

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The action network's output (logits, or Gaussian means) for observations already on the device.

        The same computation as ``ActorCriticPolicy.get_distribution`` up to the distribution, without
        building it: torch's distribution objects (normalisation, validation) cost more than a small
        policy's forward, and this part has no host syncs, so it can be captured in a CUDA graph.
        """
        if self._to_chw:
            obs = obs.permute(0, 3, 1, 2)
        policy = self.policy
        features = BasePolicy.extract_features(policy, obs, policy.pi_features_extractor)
        return policy.action_net(policy.mlp_extractor.forward_actor(features))

    def _sample(self, params: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Actions from :meth:`forward`'s output, sampled with the NPC's own generator, legal under
        ``mask`` where given (NaN in the rows whose output cannot be sampled from)."""
        det, gen, policy = self.deterministic, self._generator, self.policy
        dist = policy.action_dist
        categorical, multi_categorical = _categorical_distributions(dist)
        if isinstance(dist, categorical):
            return _with_faults(_sample_logits(_masked_logits(params, mask), det, gen), _logit_faults(params))
        if isinstance(dist, multi_categorical):  # MaskablePPO's Bernoulli too: two logits per entry
            nvec = np.asarray(dist.action_dims)
            parts = _split_logits(_masked_logits(params, mask), nvec)
            actions = torch.stack([_sample_logits(p, det, gen) for p in parts], dim=1)
            return _with_faults(actions, _logit_faults(params, nvec))
        if isinstance(dist, d.BernoulliDistribution):
            faults = _bernoulli_faults(params)  # of the network's output, before the mask
            params = _masked_bernoulli(params, mask)
            if det:
                return _with_faults((params > 0).to(torch.int8), faults)  # probability > 0.5, as SB3 rounds
            u = torch.rand(params.shape, generator=gen, device=params.device)
            return _with_faults((u < torch.sigmoid(params)).to(torch.int8), faults)
        # DiagGaussian, squashed or not: mean + exp(log_std) * N(0, 1), as SB3 samples it.
        actions = params
        if not det:
            noise = torch.randn(params.shape, generator=gen, device=params.device)
            actions = params + policy.log_std.exp() * noise
        return torch.tanh(actions) if isinstance(dist, d.SquashedDiagGaussianDistribution) else actions

    def _sample_distribution(self, obs: torch.Tensor) -> torch.Tensor:
        """gSDE and custom distributions: SB3's own sampling (torch's global RNG; torch's distributions
        refuse NaN parameters themselves)."""
        if self._to_chw:
            obs = obs.permute(0, 3, 1, 2)
        return self.policy.get_distribution(obs).get_actions(deterministic=self.deterministic)


def observation_fits(stored: spaces.Space, env: spaces.Space) -> bool:
    """Whether a model trained on ``stored`` reads the NPC agents' ``env`` observations.

    SB3 trains on channel-first images (``VecTransposeImage``) and its ``obs_to_tensor``
    transposes channel-last observations back, so an HWC env space fits a CHW stored one.
    """
    if stored == env:
        return True
    if isinstance(stored, spaces.Dict) and isinstance(env, spaces.Dict):
        return stored.spaces.keys() == env.spaces.keys() and all(
            observation_fits(stored[k], env[k]) for k in env.spaces
        )
    if isinstance(env, spaces.Box) and is_image_space(env) and not is_image_space_channels_first(env):
        return stored == VecTransposeImage.transpose_space(env)
    return False


def _check_model_spaces(policy: Any, observation_space: spaces.Space, action_space: spaces.Space) -> None:
    """Refuse an SB3 model trained on other spaces than the NPC agents', naming both (a dry run
    would fail deep inside the network, with only the layer sizes to go on)."""
    model_obs = getattr(policy, "observation_space", None)
    model_act = getattr(policy, "action_space", None)
    obs_ok = not isinstance(model_obs, spaces.Space) or observation_fits(model_obs, observation_space)
    act_ok = not isinstance(model_act, spaces.Space) or model_act == action_space
    if not (obs_ok and act_ok):
        raise ValueError(
            f"this SB3 model was trained on observation space {model_obs} and action space {model_act}, but "
            f"the NPC agents it would drive have {observation_space} and {action_space}: pass a model "
            "trained "
            "on those agents' spaces (or give these agents another NPC with a mapping npc={pattern: spec})"
        )


_SPLIT_DISTRIBUTIONS = (
    d.CategoricalDistribution,
    d.MultiCategoricalDistribution,
    d.BernoulliDistribution,
    d.DiagGaussianDistribution,
)


def _from_sb3_contrib(obj: Any) -> bool:
    """Whether ``obj``'s class comes from sb3-contrib (then importing sb3-contrib costs nothing more)."""
    return type(obj).__module__.startswith("sb3_contrib.")


def _is_maskable_actor_critic(policy: Any) -> bool:
    """Whether ``policy`` is an sb3-contrib ``MaskableActorCriticPolicy`` (MaskablePPO's) whose actions come
    from its action network's logits, as an actor-critic policy's do (then masked and sampled like them)."""
    if not _from_sb3_contrib(policy):
        return False
    from sb3_contrib.common.maskable import distributions as md  # optional: sb3-contrib
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

    from_latent = MaskableActorCriticPolicy._get_action_dist_from_latent
    return (
        isinstance(policy, MaskableActorCriticPolicy)
        and type(policy)._get_action_dist_from_latent is from_latent
        and isinstance(
            policy.action_dist, (md.MaskableCategoricalDistribution, md.MaskableMultiCategoricalDistribution)
        )
    )


def _categorical_distributions(dist: Any) -> tuple[tuple[type, ...], tuple[type, ...]]:
    """The categorical and multi-categorical distribution classes ``dist`` may be: SB3's, and sb3-contrib's
    maskable ones where ``dist`` is one of sb3-contrib's."""
    if not _from_sb3_contrib(dist):
        return (d.CategoricalDistribution,), (d.MultiCategoricalDistribution,)
    from sb3_contrib.common.maskable import distributions as md  # optional: sb3-contrib

    return (
        (d.CategoricalDistribution, md.MaskableCategoricalDistribution),
        (d.MultiCategoricalDistribution, md.MaskableMultiCategoricalDistribution),
    )

def check_npc_policy(policy: NPCPolicy, agents: list[Any] | None, observation_space: spaces.Space,
                     action_space: spaces.Space) -> None:
    """Dry-run ``policy`` on two sampled observations; raise ``ValueError`` naming both spaces on failure.

    :param agents: the agents it drives, for the message (``None``: not known yet, as in ``load_npc``)
    """
    for_agents = "" if agents is None else f" for agents {agents}"
    where = (
        f"NPC policy {policy!r}{for_agents} (observation space {observation_space}, "
        f"action space {action_space})"
    )
    if policy.observation_space != observation_space or policy.action_space != action_space:
        raise ValueError(
            f"{where} was built for observation space {policy.observation_space} and action space "
            f"{policy.action_space}; give each group of NPC agents a policy for its own spaces"
        )
    observation_space.seed(0)
    obs = np.stack([np.asarray(observation_space.sample()) for _ in range(2)])
    rows = np.arange(2)
    policy.reset(2, seed=0)
    # A policy that takes masks is tried with them (all actions legal), as the engine will call it.
    masked = policy.takes_mask and _maskable(action_space)
    mask = {"mask": np.ones((2, mask_width(action_space)), dtype=bool)} if masked else {}
    try:
        actions = np.asarray(policy.act(obs, rows, np.ones(2, dtype=bool), **mask))
    except Exception as e:  # any failure here means the policy cannot act in this env
        raise ValueError(
            f"{where} failed on a dry-run batch of 2 observations: {type(e).__name__}: {e}"
        ) from e
    if actions.shape[:1] != (2,) or not all(_contains(action_space, a) for a in actions):
        raise ValueError(
            f"{where} returned actions that are not in the action space on a dry-run batch: "
            f"shape {actions.shape}, values {actions.tolist()}"
        )


def _contains(space: spaces.Space, action: np.ndarray) -> bool:
    if isinstance(space, spaces.Discrete):
        return action.shape == () and np.issubdtype(action.dtype, np.integer) and space.contains(int(action))
    return space.contains(np.asarray(action, dtype=space.dtype)) and np.shape(action) == space.shape
