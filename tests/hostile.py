"""Builders of hostile and malformed inputs for the hardening tests (issue #14), and a bounded runner.

Every builder starts from a real artefact (an SB3 model saved with ``model.save``, a torch
archive written by ``torch.save``, a real zip) and tampers with it the way an attacker or a
damaged disk would. Large payloads are never materialised: a member that decompresses to 1 GiB
is held as pieces and written as one short deflate stream repeated (see :class:`Member`), so
building one takes a fraction of a second and about 1 MB of disk.

The spaces are those of :class:`tests.envs.ScriptedParallelEnv`'s agents (``OBS``, ``ACT``), so
a tampered model is a checkpoint the NPC agent ``b_0`` of that env would otherwise load.

:func:`run_bounded` runs a snippet in a fresh process (a fork of a process that has imported
torch, SB3 and npc_wrapper once, so it starts in milliseconds) under a wall-clock bound that
starts when the snippet says it is ready, and a resident-memory bound that this process enforces
by polling ``/proc`` (a loader stuck in C code would starve a watchdog thread of its own). It
reports the elapsed time and the peak RSS above the ready mark's, so a regression fails fast
instead of hanging the suite or exhausting the machine.
"""

from __future__ import annotations

import atexit
import base64
import copyreg
import dataclasses
import io
import json
import multiprocessing
import os
import pickle
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch
from gymnasium import spaces
from mpe2 import simple_tag_v3
from stable_baselines3 import PPO
from torch._utils import _rebuild_tensor_v2

import npc_wrapper as nw
from tests.envs import ScriptedParallelEnv

__all__ = [
    "ACT",
    "OBS",
    "BUILD_LIMIT",
    "BUILT",
    "BoundedRun",
    "Child",
    "HangingEnv",
    "LIMIT_WORDS",
    "Member",
    "NaNLogits",
    "Reduced",
    "deep_json",
    "deep_pickle",
    "empty_zip",
    "fails_in_worker",
    "huge_box",
    "limited_simple_tag",
    "many_boxes",
    "one_line_naming",
    "padded_data_zip",
    "raw_serialized",
    "read_members",
    "replace_members",
    "run_bounded",
    "sb3_model_zip",
    "sb3_serialized",
    "shared_reference_bomb",
    "start_zygote",
    "states_a_limit",
    "status_kb",
    "tensor_bomb_zip",
    "truncated_sb3_zip",
    "uninitialised_box",
    "with_data_entries",
    "write_zip",
    "yaml_alias_bomb",
    "zip_pieces",
]

#: The observation and action spaces of ScriptedParallelEnv's agents (its NPC ``b_0`` with the default split).
OBS = spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = spaces.Discrete(4)

#: Words with which a refusal may state the limit it hit ("exceeds the limit of 64 MiB", "at most 100").
LIMIT_WORDS = ("limit", "at most", "exceed", "too large", "too big", "too deep", "too many", "maximum", "cap",
               "more than", "larger than", "bigger than", "greater than", "above")


def one_line_naming(message: str, *names: str, longest: int = 2000) -> None:
    """Assert that ``message`` is one short line (as the issue asks of every refusal) naming each of
    ``names`` (case-insensitively)."""
    assert "\n" not in message.strip(), f"not one line: {message[:3000]!r}"
    assert len(message) <= longest, f"{len(message)} characters: {message[:500]!r}..."
    for name in names:
        assert name.lower() in message.lower(), f"{name!r} not named in: {message[:2000]!r}"


def states_a_limit(message: str) -> bool:
    """Whether ``message`` states a limit: one of :data:`LIMIT_WORDS` and a number."""
    return any(w in message.lower() for w in LIMIT_WORDS) and re.search(r"\d", message) is not None


# ----------------------------------------------------------------------------------- real models
def sb3_model_zip(path: Path, *, net_arch: Iterable[int] = (8,), nan_weights: bool = False) -> Path:
    """A real SB3 PPO model for ScriptedParallelEnv's agents, built on the wrapper's own vector env and
    saved with ``model.save`` (untrained: its weights are PPO's initialisation).

    :param nan_weights: set every weight to NaN first, as a diverged run would leave them
    """
    venv = nw.make_vec_env(ScriptedParallelEnv, num_envs=1, npc="random", device="cpu", seed=0)
    try:
        model = PPO("MlpPolicy", venv, n_steps=8, batch_size=8, seed=0, device="cpu",
                    policy_kwargs={"net_arch": list(net_arch)})
        if nan_weights:
            with torch.no_grad():
                for p in model.policy.parameters():
                    p.fill_(float("nan"))
        model.save(path)
    finally:
        venv.close()
    return Path(path)


class NaNLogits(torch.nn.Module):
    """Logits for ``ACT`` that are NaN for observations whose first entry (ScriptedParallelEnv's step
    counter) is at least ``from_step``: a network that diverges on some inputs only."""

    def __init__(self, from_step: float = 0.0) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(OBS.shape[0], ACT.n)
        self.from_step = from_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        return torch.where(x[:, :1] >= self.from_step, torch.full_like(logits, float("nan")), logits)


# ------------------------------------------------------------------------------ zip plumbing
#: A byte stream as pieces written in order, each ``(bytes, times)``: a GiB of zeros is ``(1 MiB, 1024)``.
Pieces = list[tuple[bytes, int]]


@dataclasses.dataclass
class Member:
    """One zip member held as its compressed pieces, so a huge member never exists uncompressed.

    :param parts: the compressed stream
    :param crc: CRC-32 of the uncompressed content
    :param size: uncompressed size (below 4 GiB: the archives written here are not zip64)
    :param method: ``zipfile.ZIP_STORED`` or ``zipfile.ZIP_DEFLATED``
    """

    name: str
    parts: Pieces
    crc: int
    size: int
    method: int

    @classmethod
    def of(cls, name: str, content: bytes | Pieces, method: int = zipfile.ZIP_DEFLATED) -> Member:
        """A member holding ``content`` (bytes, or pieces repeated without being joined).

        Deflated, each distinct piece is compressed once with a full flush, which makes its blocks
        independent of what came before, so its compressed form can be repeated as it is.
        """
        pieces = [(content, 1)] if isinstance(content, bytes) else content
        crc = 0
        for b, n in pieces:
            for _ in range(n):
                crc = zlib.crc32(b, crc)
        size = sum(len(b) * n for b, n in pieces)
        if method == zipfile.ZIP_STORED:
            return cls(name, pieces, crc, size, method)
        parts = [(_deflate(b, zlib.Z_FULL_FLUSH), n) for b, n in pieces] + [(_deflate(b"", zlib.Z_FINISH), 1)]
        return cls(name, parts, crc, size, method)

    @property
    def compressed_size(self) -> int:
        return sum(len(b) * n for b, n in self.parts)


def _deflate(data: bytes, mode: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, as zip members hold it
    return c.compress(data) + c.flush(mode)


def zip_pieces(members: Iterable[Member]) -> Pieces:
    """A plain (non-zip64) zip archive of ``members``, as pieces."""
    out: Pieces = []
    central, offset = [], 0
    for m in members:
        name = m.name.encode()
        fields = (m.method, 0, 0x21, m.crc, m.compressed_size, m.size, len(name))  # time 0, date 1980-01-01
        local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, *fields, 0) + name
        out += [(local, 1), *m.parts]
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, *fields, 0, 0, 0, 0,
                                   0o644 << 16, offset) + name)
        offset += len(local) + m.compressed_size
    directory = b"".join(central)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), len(directory), offset, 0)
    return [*out, (directory + end, 1)]


def write_zip(path: Path, members: Iterable[Member]) -> Path:
    """Write a zip archive of ``members``, streaming their pieces."""
    with open(path, "wb") as f:
        for b, n in zip_pieces(members):
            for _ in range(n):
                f.write(b)
    return Path(path)


def read_members(source: Path | bytes) -> dict[str, bytes]:
    """Every member of a small zip (a file, or bytes), in order."""
    with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as z:
        return {name: z.read(name) for name in z.namelist()}


def replace_members(src: Path, dst: Path, **replacements: bytes | Member) -> Path:
    """``src`` rewritten to ``dst`` with some members replaced (``**{"policy.pth": ...}`` for names
    with dots); the others are kept."""
    members = read_members(src)
    unknown = set(replacements) - set(members)
    assert not unknown, f"{src} has no members {unknown}"
    out = []
    for name, content in members.items():
        new = replacements.get(name, content)
        out.append(new if isinstance(new, Member) else Member.of(name, new))
    return write_zip(dst, out)


def empty_zip(path: Path) -> Path:
    """A valid zip archive with no members (what a save that died after opening the archive leaves)."""
    zipfile.ZipFile(path, "w").close()
    return Path(path)


def truncated_sb3_zip(src: Path, dst: Path) -> Path:
    """``src`` cut right after its ``policy.pth``: SB3 stores that member uncompressed, and it is itself
    a zip (torch's archive), so the cut file still ends in a zip's end record -- the inner one's.
    ``zipfile`` then opens it, as the torch archive, and ``testzip()`` passes."""
    with zipfile.ZipFile(src) as z:
        info = z.getinfo("policy.pth")
        assert info.compress_type == zipfile.ZIP_STORED, "SB3 stores policy.pth uncompressed"
    raw = Path(src).read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    end = info.header_offset + 30 + name_len + extra_len + info.compress_size
    Path(dst).write_bytes(raw[:end])
    return Path(dst)


# ---------------------------------------------------------------------------------- SB3 data
def sb3_serialized(obj: Any) -> dict[str, str]:
    """``obj`` as SB3's ``data_to_json`` stores a value JSON cannot hold: cloudpickle, base64, in JSON."""
    return raw_serialized(cloudpickle.dumps(obj), str(type(obj)))


def raw_serialized(pickled: bytes, type_name: str = "<class 'dict'>") -> dict[str, str]:
    """Pickle bytes written by hand, wrapped as SB3 stores a pickled entry."""
    return {":type:": type_name, ":serialized:": base64.b64encode(pickled).decode()}


def with_data_entries(src: Path, dst: Path, **entries: Any) -> Path:
    """``src`` with entries of its ``data`` JSON replaced by ``entries`` (already JSON-ready values)."""
    data = json.loads(read_members(src)["data"])
    data.update(entries)
    return replace_members(src, dst, data=json.dumps(data).encode())


def shared_reference_bomb(depth: int = 24) -> list:
    """``a = [0]; a = [a, a]`` ``depth`` times: ~10 bytes a level pickled (the pickle memo shares
    ``a``), ``2 ** depth`` leaves for anything that copies it out in full."""
    a: list = [0]
    for _ in range(depth):
        a = [a, a]
    return a


def deep_pickle(depth: int = 100_000) -> bytes:
    """The pickle of ``{"net_arch": [[[...]]]}`` nested ``depth`` deep, written opcode by opcode (pickling
    it would recurse): ``EMPTY_LIST`` ``depth`` times, then ``APPEND`` each into the one below."""
    key = b"net_arch"
    return (b"\x80\x02}" + b"X" + struct.pack("<I", len(key)) + key + b"]" * depth + b"a" * (depth - 1)
            + b"s.")


def deep_json(depth: int) -> bytes:
    """``[[[...]]]`` nested ``depth`` deep: valid JSON that recursive parsers cannot read."""
    return b"[" * depth + b"]" * depth


class Reduced:
    """Pickles as ``func(*args)``: a call the loading unpickler will make, without making it here."""

    def __init__(self, func: Any, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple]:
        return self.func, self.args


def huge_box(shape: tuple[int, ...] = (11000, 11000)) -> Reduced:
    """A ``Box(0, 1, shape, float64)`` that pickles in ~100 bytes (scalar bounds) and whose construction
    allocates ``low`` and ``high`` in full (2 x 968 MB for the default shape)."""
    return Reduced(spaces.Box, (0.0, 1.0, shape, "float64"))


def many_boxes(count: int = 200, shape: tuple[int, ...] = (1000, 1000)) -> Reduced:
    """A ``Tuple`` of ``count`` separately built Boxes, each of a moderate declared shape (16 MB of bounds
    each, 3.2 GB in all by default): a per-space shape limit alone does not bound it."""
    return Reduced(spaces.Tuple, ([huge_box(shape) for _ in range(count)],))


def uninitialised_box() -> Reduced:
    """A ``Box`` made by ``copyreg._reconstructor`` (allowed by the unpickler), so its ``__init__`` never
    ran: it has none of its attributes."""
    return Reduced(copyreg._reconstructor, (spaces.Box, object, None))


def padded_data_zip(src: Path, dst: Path, pad: int = 1 << 30) -> Path:
    """``src`` whose ``data`` is its JSON followed by ``pad`` bytes of whitespace (still valid JSON):
    about 1 MB compressed per GiB."""
    chunk = b" " * (1 << 20)
    data = Member.of("data", [(read_members(src)["data"], 1), (chunk, pad // len(chunk))])
    return replace_members(src, dst, data=data)


class _Storage:
    """Stands for the tensor's storage while its pickle is written (a persistent id, as torch writes)."""


class _StoragePickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, numel: int) -> None:
        super().__init__(file, protocol=2)
        self.numel = numel

    def persistent_id(self, obj: Any) -> Any:
        return ("storage", torch.FloatStorage, "0", "cpu", self.numel) if isinstance(obj, _Storage) else None


def tensor_bomb_zip(src: Path, dst: Path, nbytes: int = 1 << 30) -> Path:
    """``src`` whose ``policy.pth`` is a torch archive (laid out as ``torch.save`` writes one) holding a
    float32 zero tensor of ``nbytes`` under the policy's first weight name: ~1 MB compressed per GiB."""
    key = next(iter(torch.load(io.BytesIO(read_members(src)["policy.pth"]), weights_only=True)))
    small = io.BytesIO()
    torch.save({key: torch.zeros(1)}, small)
    numel = nbytes // 4
    pickled = io.BytesIO()
    tensor = Reduced(_rebuild_tensor_v2, (_Storage(), 0, (numel,), (1,), False, OrderedDict()))
    _StoragePickler(pickled, numel).dump({key: tensor})
    inner = []
    for name, content in read_members(small.getvalue()).items():
        if name.endswith("/data.pkl"):
            content = pickled.getvalue()
        elif name.endswith("/data/0"):
            content = [(bytes(1 << 20), nbytes >> 20)]
        inner.append(Member.of(name, content, zipfile.ZIP_STORED))
    # torch stores its members; the SB3 zip holding the archive is deflated here.
    return replace_members(src, dst, **{"policy.pth": Member.of("policy.pth", zip_pieces(inner))})


# ---------------------------------------------------------------------------------------- envs
#: Envs :func:`limited_simple_tag` builds before it refuses (a test resets it).
BUILD_LIMIT = 16
BUILT: list[int] = []


def limited_simple_tag(**kwargs: Any) -> Any:
    """mpe2 ``simple_tag_v3.parallel_env(**kwargs)`` (an ``env.factory._target_`` for npc-train), that
    refuses to build more than ``BUILD_LIMIT`` envs in this process: a stand-in for running out of
    memory, so a run that builds every env of ``trainer.num_envs=1000000`` stops at once."""
    BUILT.append(1)
    if len(BUILT) > BUILD_LIMIT:
        raise RuntimeError(f"hostile.limited_simple_tag: more than {BUILD_LIMIT} envs built")
    return simple_tag_v3.parallel_env(**kwargs)


def fails_in_worker() -> Any:
    """A ScriptedParallelEnv factory that raises only inside a worker process (a missing GPU, a display
    or a licence file that only the main process has)."""
    if multiprocessing.parent_process() is not None:
        raise RuntimeError("hostile.fails_in_worker: this factory fails in a worker process")
    return ScriptedParallelEnv()


class HangingEnv(ScriptedParallelEnv):
    """A ScriptedParallelEnv whose step number ``hang_at`` of an episode never returns, in a worker
    process only (a deadlocked simulator, a network call without a timeout)."""

    def __init__(self, hang_at: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hang_at = hang_at

    def step(self, actions: dict[Any, Any]) -> Any:
        if self.num_steps + 1 >= self.hang_at and multiprocessing.parent_process() is not None:
            while True:
                time.sleep(3600)
        return super().step(actions)


# ------------------------------------------------------------------------------------ configs
def yaml_alias_bomb(levels: int = 9, width: int = 9) -> str:
    """YAML whose anchors refer to the level below ``width`` times each (``width ** levels`` leaves);
    a YAML loader shares the nodes, anything that copies them out does not."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- bounded runs
#: What a bounded snippet can call: ``ready()`` once its set-up is done (the bounds start there),
#: ``result(obj)`` to report a JSON value, ``error_of(fn, *args, **kwargs)`` for the exception ``fn``
#: raises, as a dict (``None`` if it returns).
_PRELUDE = '''
import json, sys, time
def ready():
    print("READY", flush=True)
def result(obj):
    print("RESULT " + json.dumps(obj, default=str), flush=True)
def error_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except BaseException as e:
        return {"type": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__], "message": str(e)}
    return None
'''

#: A process that imports the heavy modules once and forks one child per snippet, so a bounded run
#: starts in milliseconds instead of the seconds an interpreter takes to import torch and SB3. Its
#: torch runs on one intra-op thread (no thread pool whose locks a child would inherit held), so
#: forking it is safe.
_ZYGOTE = '''
import json, os, sys, traceback
import torch
torch.set_num_threads(1)
import hydra, npc_wrapper.cli.evaluate, npc_wrapper.cli.train
import npc_wrapper as nw
from tests import hostile
# Warm up: loading an SB3 model imports torch._dynamo (through torch.optim), ~3 s once, not per child.
nw.load_npc(str(hostile.sb3_model_zip(sys.argv[1])), hostile.OBS, hostile.ACT, device="cpu")
os.unlink(sys.argv[1])
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.setsid()  # its own process group: killing the group ends the worker processes it starts
        os.dup2(os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        sys.argv = ["hostile", *request["argv"]]
        code = 0
        try:
            exec(compile(request["code"], "<hostile snippet>", "exec"), {"__name__": "__main__"})
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
'''


def _temp_file(suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix="hostile-", suffix=suffix)
    os.close(fd)
    return Path(name)


class _Zygote:
    """The forking process of :data:`_ZYGOTE`, started on first use and ended with this interpreter."""

    _instance: _Zygote | None = None

    def __init__(self) -> None:
        repo = Path(__file__).resolve().parent.parent
        warm_up = _temp_file(".zip")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE, str(warm_up)], cwd=repo,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])},
            text=True,
        )
        atexit.register(self.close)

    @classmethod
    def get(cls) -> _Zygote:
        if cls._instance is None or cls._instance.proc.poll() is not None:
            cls._instance = cls()
        return cls._instance

    def fork(self, code: str, argv: Iterable[str], out: Path, err: Path) -> int:
        """Start ``code`` in a forked child writing its stdout to ``out`` and stderr to ``err``; its pid."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"code": code, "argv": list(argv), "out": str(out), "err": str(err)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, f"the forking process ended (status {self.proc.wait()}); run its script to see why"
        return int(json.loads(answer)["pid"])

    def exit_code(self, timeout: float) -> int | None:
        """The exit status of the current child once it has ended (``None`` if not within ``timeout``)."""
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        return int(json.loads(self.proc.stdout.readline())["exit"])

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(10)


def start_zygote() -> None:
    """Start the forking process now (it takes seconds to import and warm up), so that it is ready by
    the time the first bounded run needs it; later calls do nothing."""
    _Zygote.get()


class Child:
    """A snippet running in a child of the zygote (its own process group).

    :param pid: the child's process id (and process group id)
    """

    def __init__(self, code: str, argv: Iterable[str] = ()) -> None:
        self._zygote = _Zygote.get()
        self._out, self._err = _temp_file(".out"), _temp_file(".err")
        self.pid = self._zygote.fork(_PRELUDE + textwrap.dedent(code), argv, self._out, self._err)
        self.returncode: int | None = None

    def output(self) -> str:
        """What the child printed on stdout so far."""
        return self._out.read_text(errors="replace")

    def errors(self) -> str:
        """What the child printed on stderr so far."""
        return self._err.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.output().splitlines()

    def poll(self, timeout: float = 0.0) -> int | None:
        """The exit status once the child has ended, else ``None``."""
        if self.returncode is None:
            self.returncode = self._zygote.exit_code(timeout)
        return self.returncode

    def kill(self, group: bool = True) -> None:
        """SIGKILL the child (and, with ``group``, every process of its group: its workers)."""
        try:
            if group:
                os.killpg(self.pid, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def finish(self) -> tuple[str, str]:
        """End the child's process group if still running, reap it; its stdout and stderr."""
        if self.poll() is None:
            self.kill()
            self.poll(30)
        self.kill()  # workers the child left behind, still in its group
        texts = self.output(), self.errors()
        self._out.unlink(missing_ok=True)
        self._err.unlink(missing_ok=True)
        return texts


@dataclasses.dataclass
class BoundedRun:
    """What :func:`run_bounded` saw.

    :param result: the JSON the snippet last reported with ``result()`` (``None`` if none)
    :param killed: why it was killed: ``"time"``, ``"memory"`` or ``"setup"`` (``None``: it ended)
    :param seconds: wall time from ``ready()`` to the end
    :param peak_mb: peak resident memory (VmHWM) above the resident memory at ``ready()``, in MiB
    :param returncode: the exit status (``None`` when killed)
    :param output: what it printed on stdout
    :param errors: what it printed on stderr
    """

    result: Any
    killed: str | None
    seconds: float
    peak_mb: float
    returncode: int | None
    output: str
    errors: str

    def error_lines(self) -> list[str]:
        """The non-empty lines of its stderr."""
        return [line for line in self.errors.splitlines() if line.strip()]


def status_kb(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` field in kB (``VmRSS``, ``VmHWM``); 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_bounded(code: str, *, seconds: float, memory_mb: float, argv: Iterable[str] = (),
                setup_s: float = 120.0) -> BoundedRun:
    """Run ``code`` in a fresh process (a fork of the zygote) and bound it from outside.

    It is killed ``seconds`` after it calls ``ready()``, or as soon as its resident memory exceeds
    the ready mark's by ``memory_mb`` MiB (polled every 10 ms), or if it is not ready within
    ``setup_s``.
    """
    child = Child(code, argv)
    start, ready_at, base_kb, peak_kb, killed = time.monotonic(), None, 0, 0, None
    while child.poll(0.01) is None:
        now = time.monotonic()
        if ready_at is None:
            if "READY" in child.lines():
                ready_at, base_kb = now, status_kb(child.pid, "VmRSS")
            elif now - start > setup_s:
                killed = "setup"
        if ready_at is not None:
            peak_kb = max(peak_kb, status_kb(child.pid, "VmHWM"), status_kb(child.pid, "VmRSS"))
            if (peak_kb - base_kb) / 1024 > memory_mb:
                killed = "memory"
            elif now - ready_at > seconds:
                killed = "time"
        if killed:
            break
    end = time.monotonic()
    output, errors = child.finish()
    found = [json.loads(line[len("RESULT "):]) for line in output.splitlines() if line.startswith("RESULT ")]
    return BoundedRun(
        result=found[-1] if found else None,
        killed=killed,
        seconds=end - (ready_at or end),
        peak_mb=max(0, peak_kb - base_kb) / 1024,
        returncode=None if killed else child.returncode,
        output=output,
        errors=errors,
    )
