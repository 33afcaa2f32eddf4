"""How much memory the machine has left, and amounts of memory as people read them.

The vector envs and ``npc-train`` compare what a request will allocate with :func:`available_memory`
before allocating it, so a typo (``num_envs=10**9``) is refused with the numbers instead of ending
in the kernel's out-of-memory killer.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["available_memory", "format_bytes"]

#: cgroup v2 files of this process's memory limit and use (a container's limit is below the machine's).
_CGROUP = Path("/sys/fs/cgroup")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _meminfo_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (Linux): free memory and what the kernel can reclaim."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate without swapping, as well as it can be known.

    Linux: ``MemAvailable``, lowered to what is left under the process's cgroup v2 limit; elsewhere the
    free physical pages. ``None`` where the platform tells neither.
    """
    found = _meminfo_available()
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    limit, used = _read_int(_CGROUP / "memory.max"), _read_int(_CGROUP / "memory.current")
    if limit is not None and used is not None:
        found = min(found, max(limit - used, 0))
    return found


def format_bytes(n: float) -> str:
    """``n`` bytes with a binary unit, three significant digits: ``'1.50 KiB'``, ``'43.2 GiB'``.

    Example::

        >>> format_bytes(512), format_bytes(1536), format_bytes(43.2 * 2**30)
        ('512 B', '1.50 KiB', '43.2 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            break
        n /= 1024
    if unit == "B":
        return f"{n:.0f} B"
    return f"{n:.0f} {unit}" if abs(n) >= 100 else f"{n:#.3g} {unit}"
