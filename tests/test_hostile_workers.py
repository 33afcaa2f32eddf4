"""Worker processes under faults (issue #14, finding 9).

Envs that fail or hang only inside a worker (``tests.hostile.fails_in_worker``, ``HangingEnv``).
Anything that can hang runs in a bounded child process (``tests.hostile``), whose process group is
killed afterwards, so neither a hung worker nor an orphan outlives the test.

Each test reproduced a finding that failed on the code of its time (they were strict xfails
until fixed); now each guards its fix.

Assumptions the implementer may adapt (names only, never the strength of an assertion):

* ``make_vec_env(..., step_timeout=SECONDS)`` is the issue's name for the bound (default: none);
  a step past it raises ``TimeoutError`` (the builtin, or ``multiprocessing.TimeoutError``) or a
  ``RuntimeError``, one line naming the worker ("worker" and its index) and the timeout;
* "at once" is within 2 s of the error, and "with their parent" within 3 s of its death.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import re
import time

import numpy as np
import pytest

import npc_wrapper as nw
from tests import hostile
from tests.envs import ScriptedParallelEnv


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_factory_failing_in_a_worker_tears_the_workers_down_at_once() -> None:
    """The factory's error is raised, and no worker outlives it: today they live until garbage collection,
    which then prints "Exception ignored ... Bad file descriptor"."""
    gc.disable()  # the workers must be gone because make_vec_env ended them, not because the GC did
    try:
        with pytest.raises(RuntimeError, match="fails in a worker process"):
            nw.make_vec_env(hostile.fails_in_worker, num_envs=2, num_workers=2, start_method="fork")
        deadline = time.monotonic() + 2.0
        while multiprocessing.active_children() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert multiprocessing.active_children() == []
    finally:
        for worker in multiprocessing.active_children():  # today's leftovers, ended here, not by the GC
            worker.kill()
            worker.join(5)
        gc.enable()


HUNG_STEP = """
import functools
import numpy as np
import npc_wrapper as nw
from tests import hostile as h
try:
    venv = nw.make_vec_env(functools.partial(h.HangingEnv, hang_at=2), num_envs=2, num_workers=2,
                           start_method="fork", step_timeout=1.0)
except TypeError as e:  # no step_timeout yet
    result({"make": str(e)})
    raise SystemExit(0)
venv.reset()
venv.step(np.zeros(venv.num_envs, dtype=np.int64))  # step 1 of 2: fine
ready()
t = time.time()
error = error_of(venv.step, np.zeros(venv.num_envs, dtype=np.int64))
took = time.time() - t
t = time.time()
venv.close()
result({"error": error, "seconds": took, "close_seconds": time.time() - t})
"""


def test_step_timeout_turns_a_hung_worker_into_an_error_naming_it() -> None:
    run = hostile.run_bounded(HUNG_STEP, seconds=10.0, memory_mb=500)
    assert run.result is not None, f"killed for {run.killed} after {run.seconds:.1f} s: {run.errors[-2000:]}"
    assert "make" not in run.result, run.result["make"]
    error = run.result["error"]
    assert error is not None, "the hung step returned"
    assert {"TimeoutError", "RuntimeError"} & set(error["mro"]), error
    hostile.one_line_naming(error["message"], "worker")
    assert re.search(r"time(d)? ?out", error["message"].lower()), error["message"]
    assert 0.9 <= run.result["seconds"] < 3.0 and run.result["close_seconds"] < 3.0, run.result


PARENT_OF_HUNG_WORKERS = """
import functools, json, multiprocessing, sys
import numpy as np
import npc_wrapper as nw
from tests import hostile as h
venv = nw.make_vec_env(functools.partial(h.HangingEnv, hang_at=int(sys.argv[1])), num_envs=2, num_workers=2,
                       start_method="fork")
venv.reset()
print("WORKERS " + json.dumps([p.pid for p in multiprocessing.active_children()]), flush=True)
venv.step(np.zeros(venv.num_envs, dtype=np.int64))
time.sleep(3600)
"""


def workers_after_parent_killed(hang_at: int) -> list[int]:
    """Start a vector env with 2 workers in a child, step it (hanging at step ``hang_at``), SIGKILL the
    child alone (not its workers), and return the workers still running 3 s later."""
    child = hostile.Child(PARENT_OF_HUNG_WORKERS, [str(hang_at)])
    try:
        deadline = time.monotonic() + 60
        while not any(line.startswith("WORKERS ") for line in child.lines()):
            assert child.poll(0.05) is None and time.monotonic() < deadline, child.errors()[-2000:]
        workers = json.loads(next(ln for ln in child.lines() if ln.startswith("WORKERS "))[len("WORKERS "):])
        time.sleep(0.5)  # into the step
        child.kill(group=False)
        child.poll(10)
        deadline = time.monotonic() + 3
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        return [pid for pid in workers if alive(pid)]
    finally:
        child.finish()  # ends whatever is left of its process group


def test_hung_workers_die_with_their_parent() -> None:
    assert workers_after_parent_killed(hang_at=1) == []


def test_idle_workers_die_with_their_parent() -> None:
    """What already holds: workers waiting for a command see their pipe close and exit."""
    assert workers_after_parent_killed(hang_at=10**6) == []


def test_a_worker_that_dies_is_reported_at_once() -> None:
    """What already holds (the issue's "worker faults surface within milliseconds"): a killed worker
    makes the next step a RuntimeError saying so, not a hang."""
    venv = nw.make_vec_env(ScriptedParallelEnv, num_envs=2, num_workers=2, start_method="fork", seed=0)
    try:
        venv.reset()
        victim = multiprocessing.active_children()[0]
        victim.kill()
        victim.join(5)
        t = time.monotonic()
        with pytest.raises(RuntimeError, match="worker process"):
            venv.step(np.zeros(venv.num_envs, dtype=np.int64))
        assert time.monotonic() - t < 3.0
    finally:
        venv.close()
    assert multiprocessing.active_children() == []

