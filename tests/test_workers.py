"""Stepping the sub-envs in worker processes: same results as in-process, clear errors, no hangs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import numpy as np
import pytest

import npc_wrapper as nw
from tests.envs import RecordingParallelEnv, ScriptedParallelEnv


class ExplodingEnv(ScriptedParallelEnv):
    """Raises inside ``step`` at step ``explode_at`` of its first episode (module level: it pickles)."""

    def __init__(self, explode_at: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.explode_at = explode_at

    def step(self, actions: dict) -> Any:
        if self.num_resets == 1 and self.num_steps + 1 == self.explode_at:
            raise ZeroDivisionError(f"boom at step {self.explode_at}")
        return super().step(actions)


class DyingEnv(ScriptedParallelEnv):
    """The env seeded 1 ends its worker process at its second step (module level: it pickles)."""

    def step(self, actions: dict) -> Any:
        if self.episode_id == 1 and self.num_steps == 1:
            os._exit(1)
        return super().step(actions)


class UnpicklableError(Exception):
    """Carries a lock, so it cannot travel back from a worker as it is."""

    def __init__(self) -> None:
        super().__init__("physics failed", threading.Lock())


class RaisesUnpicklable(ScriptedParallelEnv):
    def step(self, actions: dict) -> Any:
        if self.num_steps == 1:
            raise UnpicklableError()
        return super().step(actions)


def env_fn() -> RecordingParallelEnv:
    return RecordingParallelEnv(ScriptedParallelEnv(agents=["a_0", "a_1", "b_0", "b_1"], obs_shape=(4,),
                                                    max_steps=5, death_steps={"a_1": 2, "b_0": 3}))


def run(kind: str, num_workers: int, steps: int = 14) -> list[Any]:
    """Everything a trainer sees, for ``steps`` steps with fixed actions and a random NPC."""
    kwargs = {"num_envs": 4, "npc": "random", "training_agents_pct": 0.5, "num_workers": num_workers}
    actions = np.random.default_rng(0).integers(0, 4, size=(steps, 8))
    out: list[Any] = []
    if kind == "sb3":
        venv = nw.make_vec_env(env_fn, seed=0, **kwargs)
        out.append(venv.reset())
        out.append(venv.reset_infos)
        for a in actions:
            obs, rew, done, infos = venv.step(a)
            for info in infos:
                if "episode" in info:
                    info["episode"] = {k: v for k, v in info["episode"].items() if k != "t"}  # wall time
            out += [obs, rew, done, infos, venv.slot_alive(), list(venv.reset_infos)]
    else:
        venv = nw.make_vector_env(env_fn, **kwargs)
        out.extend(venv.reset(seed=0))
        for a in actions:
            step = venv.step(a)
            step[4].get("final_info", {}).get("episode", {}).pop("t", None)  # wall time
            out.extend(step)
            out.append(venv.slot_alive())
    out.append(venv.get_attr("action_log"))
    venv.close()
    return out


def assert_equal(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray) and a.dtype != object:
        np.testing.assert_array_equal(a, b, err_msg=where)
        assert a.dtype == np.asarray(b).dtype, where
    elif isinstance(a, np.ndarray):
        assert_equal(list(a), list(b), where)
    else:
        assert a == b, where


@pytest.mark.timeout(120)
def test_workers_give_the_same_results_as_in_process(kind: str) -> None:
    in_process = run(kind, num_workers=0)
    workers = run(kind, num_workers=2)
    assert_equal(in_process, workers)
    # The comparison covered deaths, padding, auto-resets and terminal observations.
    flat = str(in_process)
    for key in ("terminal_observation", nw.PADDING_KEY, nw.EPISODE_KEY) if kind == "sb3" else ("final_obs", nw.PADDING_KEY):
        assert key in flat


@pytest.mark.timeout(60)
def test_env_method_get_attr_set_attr_in_worker_mode() -> None:
    venv = nw.make_vec_env(lambda: ScriptedParallelEnv(obs_shape=(4,)), num_envs=4, npc="noop",
                           training_agents_pct=0.67, num_workers=2, seed=50)
    venv.reset()
    assert venv.get_attr("episode_id") == [50, 50, 51, 51, 52, 52, 53, 53]
    assert venv.get_attr("num_resets", indices=[7]) == [1]
    assert venv.env_method("agent_index", "b_0", indices=[5]) == [2]
    venv.set_attr("max_steps", 1, indices=[6])  # env 3, in the second worker
    assert venv.get_attr("max_steps") == [10] * 6 + [1, 1]
    _, _, done, _ = venv.step(np.zeros(8, dtype=np.int64))
    assert done.tolist() == [False] * 6 + [True, True]
    assert venv.env_is_wrapped(ScriptedParallelEnv, indices=[7]) == [True]
    venv.close()


@pytest.mark.timeout(60)
def test_num_envs_must_be_a_multiple_of_num_workers() -> None:
    with pytest.raises(ValueError, match=r"num_envs=3 must be a multiple of num_workers=2"):
        nw.make_vec_env(env_fn, num_envs=3, num_workers=2)


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:.*(Received the following error|Raising the last exception|Traceback):UserWarning")
def test_sub_env_raising_in_a_worker_raises_the_same_exception_in_main() -> None:
    """As with num_workers=0: the env's own exception type, its worker traceback as the cause; the
    workers live on (the error came back as a value) and close normally."""
    venv = nw.make_vec_env(lambda: ExplodingEnv(explode_at=3), num_envs=2, npc="random",
                           training_agents_pct=0.67, num_workers=2, seed=0)
    venv.reset()
    for _ in range(2):
        venv.step(np.zeros(4, dtype=np.int64))
    with pytest.raises(ZeroDivisionError, match=r"boom at step 3") as err:
        venv.step(np.zeros(4, dtype=np.int64))
    assert "in step" in str(err.value.__cause__) and "ExplodingEnv" not in str(err.value)
    procs = list(venv.engine.backend.vec.processes)
    assert all(p.is_alive() for p in procs)
    assert venv.get_attr("explode_at") == [3] * 4  # still answering
    venv.close()
    venv.close()
    for p in procs:
        p.join(10)
        assert not p.is_alive()


@pytest.mark.timeout(60)
def test_an_exception_that_cannot_travel_back_is_named_not_a_hang() -> None:
    venv = nw.make_vec_env(RaisesUnpicklable, num_envs=2, npc="random", training_agents_pct=0.67,
                           num_workers=2)
    venv.reset()
    venv.step(np.zeros(4, dtype=np.int64))
    with pytest.raises(RuntimeError, match=r"UnpicklableError: \('physics failed', <unlocked _thread.lock"):
        venv.step(np.zeros(4, dtype=np.int64))
    venv.close()


@pytest.mark.timeout(60)
def test_a_worker_dying_mid_step_is_an_error_then_close_ends_every_worker() -> None:
    venv = nw.make_vec_env(DyingEnv, num_envs=2, npc="random", training_agents_pct=0.67, num_workers=2, seed=0)
    venv.reset()
    venv.step(np.zeros(4, dtype=np.int64))
    procs = list(venv.engine.backend.vec.processes)
    with pytest.raises(RuntimeError, match=r"worker process stepping the sub-envs died \(exit codes \[None, 1\]\)"):
        venv.step(np.zeros(4, dtype=np.int64))
    with pytest.raises(RuntimeError, match=r"cannot go on after an earlier failure .*close\(\) this vector"):
        venv.step(np.zeros(4, dtype=np.int64))
    venv.close()  # worker 0's step result was read already: gymnasium's close would wait for it forever
    for p in procs:
        p.join(10)
        assert not p.is_alive()


@pytest.mark.timeout(60)
def test_killed_worker_is_a_clear_error_not_a_hang() -> None:
    venv = nw.make_vec_env(env_fn, num_envs=2, npc="random", training_agents_pct=0.5, num_workers=2, seed=0)
    venv.reset()
    venv.step(np.zeros(4, dtype=np.int64))
    victim = venv.engine.backend.vec.processes[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    with pytest.raises(RuntimeError, match="worker process"):
        venv.step(np.zeros(4, dtype=np.int64))
    started = time.monotonic()
    venv.close()
    venv.close()
    assert time.monotonic() - started < 30


@pytest.mark.timeout(60)
def test_close_is_idempotent_and_stops_the_workers() -> None:
    venv = nw.make_vector_env(env_fn, num_envs=2, npc="random", num_workers=2)
    venv.reset(seed=0)
    procs = list(venv.engine.backend.vec.processes)
    venv.close()
    venv.close()
    for p in procs:
        p.join(10)
        assert not p.is_alive()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("close", [True, False])
def test_no_hang_at_interpreter_exit(close: bool) -> None:
    script = textwrap.dedent(f"""
        import numpy as np
        import npc_wrapper as nw
        from tests.envs import ScriptedParallelEnv
        venv = nw.make_vec_env(lambda: ScriptedParallelEnv(), num_envs=2, num_workers=2, seed=0)
        venv.reset()
        venv.step(np.zeros(venv.num_envs, dtype=np.int64))
        if {close}:
            venv.close()
        print("done")
    """)
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=90,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"


@pytest.mark.timeout(60)
def test_workers_with_spawn_start_method() -> None:
    venv = nw.make_vec_env(env_fn, num_envs=2, npc="random", training_agents_pct=0.5, num_workers=1,
                           start_method="spawn", seed=0)
    obs = venv.reset()
    np.testing.assert_array_equal(obs[:, 3], [0, 0, 1, 1])
    obs, *_ = venv.step(np.array([1, 2, 3, 0]))
    np.testing.assert_array_equal(obs[:, 2], [1, 2, 3, 0])
    venv.close()


@pytest.mark.timeout(120)
def test_spawned_workers_get_no_npc_and_an_unpicklable_factory_is_named() -> None:
    lock = threading.Lock()  # neither picklable nor needed by the workers

    def npc(obs: np.ndarray) -> np.ndarray:
        with lock:
            return np.zeros(len(obs), dtype=np.int64)

    venv = nw.make_vec_env(env_fn, num_envs=2, npc=npc, training_agents_pct=0.5, num_workers=2,
                           start_method="spawn")
    venv.reset()
    venv.step(np.zeros(4, dtype=np.int64))
    venv.close()
    with pytest.raises(ValueError, match="cannot be sent to the worker processes .*start_method='spawn'"):
        nw.make_vec_env(lambda: (lock, env_fn())[1], num_envs=2, num_workers=2, start_method="spawn")
