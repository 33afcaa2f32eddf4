"""Moving NPC batches to the policy's device and back, asynchronously on CUDA.

On CUDA, :class:`DeviceRunner` copies the observation batch once through a reused pinned host
buffer (``non_blocking``; uint8 stays uint8 and is converted on the device), runs the forward on
its own stream, and copies the actions back into a pinned host buffer, so the engine can launch
the NPC forward for step ``t+1`` at the end of step ``t`` and only wait for it when the trainer's
actions arrive. Batches run padded to a power-of-two bucket (the NPC count per step varies with
deaths), so the device sees a few batch shapes. With ``cuda_graphs=True`` one CUDA graph per bucket
holds the whole step: the copy in, the forward, the sampling (the policy's generator is registered
with the graph) and the copy out, so a step costs one host-side copy into pinned memory and one
graph launch. On CPU everything runs synchronously, unpadded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DEVICE_FORMS", "DeviceRunner", "resolve_device"]

Forward = Callable[[torch.Tensor], torch.Tensor]
#: Network output and action masks (bool, or ``None``) -> actions.
Post = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


#: The device forms the wrapper takes, as its messages name them.
DEVICE_FORMS = "'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device"


def resolve_device(device: str | torch.device, name: str = "device") -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; anything else is parsed by ``torch.device``.

    Anything but a string or a ``torch.device`` (an int would be read as a CUDA ordinal) is a
    ``TypeError``; a string torch cannot parse, or a CUDA device torch cannot see, a ``ValueError``
    that says so (otherwise torch's own error, raised while the NPC's weights are copied, tells you
    to call ``torch.load`` with a ``map_location``).

    :param name: the argument, for the messages
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name} must be {DEVICE_FORMS}, got {device!r} ({type(device).__name__})")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"{name}={device!r} is not a torch device: use {DEVICE_FORMS}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"{name}={str(device)!r} but CUDA is not available (torch {torch.__version__}); "
            f"use {name}='auto' (CUDA when available) or {name}='cpu'"
        )
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(
            f"{name}={str(device)!r} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
            f"use cuda:0..cuda:{torch.cuda.device_count() - 1}"
        )
    return resolved


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass
class _Graph:
    """One captured step for a batch-size bucket: pinned input rows in, pinned actions out."""

    graph: torch.cuda.CUDAGraph
    host_in: torch.Tensor
    host_out: torch.Tensor
    host_mask: torch.Tensor | None


class DeviceRunner:
    """Runs ``post(forward(obs), mask)`` (observation tensor -> action tensor) on ``device`` for numpy
    batches, with the rows' action masks (or ``None``) moved along.

    :param device: where the forward runs
    :param cuda_graphs: capture each step (copies, forward and ``post``) in a CUDA graph per
        batch-size bucket (CUDA only; ``forward`` and ``post`` must then be free of host syncs and
        data-dependent shapes)
    :param generator: the CUDA generator ``post`` samples with, registered with each graph so that
        replays draw fresh numbers (``None``: ``post`` draws none)
    """

    def __init__(self, device: torch.device, cuda_graphs: bool = False,
                 generator: torch.Generator | None = None) -> None:
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, got device={device}")
        graph_safe_rng = hasattr(torch.cuda.CUDAGraph, "register_generator_state")
        if cuda_graphs and generator is not None and not graph_safe_rng:
            raise RuntimeError(
                f"cuda_graphs=True with sampling needs CUDAGraph.register_generator_state, which torch "
                f"{torch.__version__} lacks: upgrade torch or pass cuda_graphs=False"
            )
        self.device = device
        self.cuda_graphs = cuda_graphs
        self._generator = generator
        self._cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self._cuda else None
        if self._cuda:
            # The policy's weights were just copied to the device on the current stream; the side stream
            # must not read them earlier. Nothing later on the current stream feeds the NPC steps (their
            # input comes from pinned host memory), so steps need no per-step stream wait.
            torch.cuda.current_stream(device).synchronize()
        self._done = torch.cuda.Event() if self._cuda else None
        self._host_obs: torch.Tensor | None = None
        self._host_act: torch.Tensor | None = None
        self._host_mask: torch.Tensor | None = None
        self._graphs: dict[tuple[int, bool], _Graph] = {}

    @staticmethod
    def to_model_dtype(x: torch.Tensor) -> torch.Tensor:
        return x if x.dtype == torch.uint8 else x.float()

    def run(
        self, forward: Forward, obs: np.ndarray, post: Post | None = None, mask: np.ndarray | None = None
    ) -> Callable[[], np.ndarray]:
        """Start ``post(forward(obs), mask)`` on the device; return a function that waits and gives the
        actions.

        The actions it gives are a view of a reused buffer, valid until the next ``run``.

        :param forward: the network
        :param post: turns the network's output into actions (sampling), given the masks
        :param mask: ``(len(obs), width)`` bool, the rows' legal actions, or ``None``
        """
        post = post or _identity
        if not self._cuda:
            with torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(obs))
                m = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
                actions = post(forward(self.to_model_dtype(x.to(self.device))), m).cpu().numpy()
            return lambda: actions
        n = len(obs)
        stream, done = self._stream, self._done
        if self.cuda_graphs:
            entry = self._graph(forward, post, obs, mask)
            entry.host_in[:n].numpy()[...] = obs
            if mask is not None:
                entry.host_mask[:n].numpy()[...] = mask
            with torch.cuda.stream(stream):
                entry.graph.replay()
                done.record(stream)
            host_act = entry.host_out
        else:
            # The whole bucket runs, as in graph mode (rows past n hold stale rows, their actions are
            # dropped): as deaths change n, cuDNN and cuBLAS then find their plans for a few batch
            # shapes cached instead of choosing anew for every n.
            size = _bucket(n)
            host_obs = self._pinned("_host_obs", (size, *obs.shape[1:]), torch.from_numpy(obs[:0]).dtype)
            host_obs[:n].numpy()[...] = obs
            m = None
            if mask is not None:
                host_mask = self._pinned("_host_mask", (size, *mask.shape[1:]), torch.bool)
                host_mask[:n].numpy()[...] = mask
            with torch.cuda.stream(stream), torch.inference_mode():
                x = host_obs[:size].to(self.device, non_blocking=True)
                if mask is not None:
                    m = host_mask[:size].to(self.device, non_blocking=True)
                actions = post(forward(self.to_model_dtype(x)), m)
                host_act = self._pinned("_host_act", tuple(actions.shape), actions.dtype)
                host_act[:size].copy_(actions, non_blocking=True)
                done.record(stream)

        def wait() -> np.ndarray:
            done.synchronize()
            return host_act[:n].numpy()

        return wait

    def _pinned(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A reused pinned host buffer with at least ``shape[0]`` rows (grown, never per step)."""
        buf = getattr(self, name)
        if buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:] or buf.dtype != dtype:
            buf = torch.zeros((_bucket(max(shape[0], 1)), *shape[1:]), dtype=dtype).pin_memory()
            setattr(self, name, buf)
        return buf

    def _graph(self, forward: Forward, post: Post, obs: np.ndarray, mask: np.ndarray | None) -> _Graph:
        """The captured step for ``obs``'s bucket (with or without masks), captured on first use."""
        size = _bucket(len(obs))
        entry = self._graphs.get((size, mask is not None))
        if entry is not None:
            return entry
        stream = self._stream
        host_in = torch.zeros((size, *obs.shape[1:]), dtype=torch.from_numpy(obs[:0]).dtype).pin_memory()
        dev_in = torch.zeros(host_in.shape, dtype=host_in.dtype, device=self.device)
        host_mask = dev_mask = None
        if mask is not None:
            host_mask = torch.ones((size, *mask.shape[1:]), dtype=torch.bool).pin_memory()
            dev_mask = torch.ones(host_mask.shape, dtype=torch.bool, device=self.device)
        # Warm-up and capture draw random numbers; rewind, so the sampled actions depend on the seed
        # and the steps taken, not on when each bucket happened to be captured.
        rng_state = self._generator.get_state() if self._generator is not None else None
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # warm-up on the side stream, as CUDA graph capture requires
                warm = post(forward(self.to_model_dtype(dev_in)), dev_mask)
            host_out = torch.empty(warm.shape, dtype=warm.dtype).pin_memory()
            graph = torch.cuda.CUDAGraph()
            if self._generator is not None:
                graph.register_generator_state(self._generator)
            with torch.cuda.graph(graph, stream=stream):
                dev_in.copy_(host_in, non_blocking=True)
                if dev_mask is not None:
                    dev_mask.copy_(host_mask, non_blocking=True)
                host_out.copy_(post(forward(self.to_model_dtype(dev_in)), dev_mask), non_blocking=True)
        if rng_state is not None:
            self._generator.set_state(rng_state)
        entry = self._graphs[size, mask is not None] = _Graph(graph, host_in, host_out, host_mask)
        return entry


def _identity(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return x
