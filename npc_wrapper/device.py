"""Moving NPC batches to the policy's device and back, asynchronously on CUDA.

On CUDA, :class:`DeviceRunner` copies the observation batch once through a reused pinned host
buffer (``non_blocking``; uint8 stays uint8 and is converted on the device), runs the forward on
its own stream, and copies the actions back into a pinned host buffer, so the engine can launch
the NPC forward for step ``t+1`` at the end of step ``t`` and only wait for it when the trainer's
actions arrive. With ``cuda_graphs=True`` the forward is captured once per batch-size bucket
(powers of two; the NPC count per step varies with deaths) and replayed. On CPU everything runs
synchronously.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["DeviceRunner", "resolve_device"]

Forward = Callable[[torch.Tensor], torch.Tensor]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class DeviceRunner:
    """Runs ``forward`` (observation tensor -> action tensor) on ``device`` for numpy batches.

    :param device: where the forward runs
    :param cuda_graphs: capture the forward with CUDA graphs per batch-size bucket (CUDA only;
        the forward must then be free of host syncs and data-dependent shapes)
    """

    def __init__(self, device: torch.device, cuda_graphs: bool = False) -> None:
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, got device={device}")
        self.device = device
        self.cuda_graphs = cuda_graphs
        self._cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self._cuda else None
        self._host_obs: torch.Tensor | None = None
        self._host_act: torch.Tensor | None = None
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def to_model_dtype(x: torch.Tensor) -> torch.Tensor:
        return x if x.dtype == torch.uint8 else x.float()

    def run(self, forward: Forward, obs: np.ndarray, post: Forward | None = None) -> Callable[[], np.ndarray]:
        """Start ``post(forward(obs))`` on the device; return a function that waits and gives the actions.

        :param forward: the network (captured in CUDA-graph mode)
        :param post: turns the network's output into actions (sampling; never captured)
        """
        post = post or (lambda out: out)
        if not self._cuda:
            with torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(obs))
                actions = post(forward(self.to_model_dtype(x.to(self.device)))).cpu().numpy()
            return lambda: actions
        n = len(obs)
        host_obs = self._pinned("_host_obs", obs.shape, torch.from_numpy(obs[:0]).dtype)
        host_obs[:n].numpy()[...] = obs
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            x = self.to_model_dtype(host_obs[:n].to(self.device, non_blocking=True))
            actions = post(self._graph_forward(forward, x) if self.cuda_graphs else forward(x))
            host_act = self._pinned("_host_act", tuple(actions.shape), actions.dtype)
            host_act[:n].copy_(actions, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)

        def wait() -> np.ndarray:
            done.synchronize()
            return host_act[:n].numpy()

        return wait

    def _pinned(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A reused pinned host buffer with at least ``shape[0]`` rows (grown, never per step)."""
        buf = getattr(self, name)
        if buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:] or buf.dtype != dtype:
            buf = torch.empty((_bucket(max(shape[0], 1)), *shape[1:]), dtype=dtype).pin_memory()
            setattr(self, name, buf)
        return buf

    def _graph_forward(self, forward: Forward, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        size = _bucket(n)
        entry = self._graphs.get(size)
        if entry is None:
            static_in = torch.zeros((size, *x.shape[1:]), dtype=x.dtype, device=self.device)
            for _ in range(2):  # warm-up on the side stream, as CUDA graph capture requires
                forward(static_in)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                static_out = forward(static_in)
            entry = self._graphs[size] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        static_in[:n].copy_(x)
        graph.replay()
        return static_out[:n]
