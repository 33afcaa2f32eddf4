"""How many CPU threads torch uses in ``npc-train`` and ``npc-eval`` (``trainer.torch_threads``).

Small networks trained on the CPU gain nothing from torch's intra-op threads and lose much when
other processes want the cores (a 2-core machine under load ran 10 times slower with 2 threads),
and a run's trained weights depend on the thread count (reductions split differently), so a run
would give other numbers on a machine with other cores. On the CPU the programs therefore use one
thread unless ``trainer.torch_threads`` says otherwise; on CUDA they leave torch's default unless it
is set.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from npc_wrapper.npcs.device import resolve_device

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(threads: int | None, device: str) -> Iterator[int]:
    """Run the block with ``threads`` torch threads (``None``: 1 on the CPU, torch's default on CUDA), then
    put the previous count back. Yields the count in force.

    :param threads: ``trainer.torch_threads``
    :param device: the config's ``device`` (``auto``, ``cpu``, ``cuda``...), already checked
    """
    if threads is None and resolve_device(device).type != "cpu":
        yield torch.get_num_threads()
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1 if threads is None else int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
