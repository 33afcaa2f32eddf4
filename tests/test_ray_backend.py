"""``backend="ray"``: env workers as Ray actors on a real local Ray cluster of two nodes.

One cluster serves the whole module (``ray.cluster_utils.Cluster``: a head and a second node, both
on this machine, each with one ``slot`` of a custom resource), and is shut down after it. Tests
that must see the workers on both nodes reserve a ``slot`` per worker, so worker 0 and worker 1
run on different nodes and their buffers cross the object store between nodes.
"""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import npc_wrapper as nw
from npc_wrapper import ray_workers
from tests.envs import ScriptedParallelEnv
from tests.test_real_envs import greedy_blue
from tests.test_workers import assert_equal

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
#: Each node holds one slot: workers that reserve one land on different nodes.
PINNED = {"CPU": 1, "slot": 1}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    assert not ray.is_initialized(), "an earlier test left Ray running"
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"slot": 1},
                                                      "include_dashboard": False})
    try:
        c.add_node(num_cpus=2, resources={"slot": 1})
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def our_actors() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("npc_wrapper-")]


def live_groups(name: str) -> list[str]:
    return [g["state"] for g in ray.util.placement_group_table().values()
            if g["name"] == name and g["state"] != "REMOVED"]


@pytest.fixture(autouse=True)
def _no_actor_left(cluster: Cluster) -> Iterator[None]:
    """Every test closes what it made: no worker actor is left behind."""
    yield
    deadline = time.monotonic() + 10
    while our_actors() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert our_actors() == []


def tag_env() -> Any:
    from mpe2 import simple_tag_v3

    return simple_tag_v3.parallel_env(max_cycles=25)


def battle_env() -> Any:
    from magent2.environments import battle_v4

    return battle_v4.parallel_env(map_size=12, max_cycles=60)  # 2 red vs 2 blue


TAG = (tag_env, {"npc": "random", "training_agents_pct": 0.75})
BATTLE = (battle_env, {"npc": greedy_blue, "training_agents": ["red_*"]})


def trajectory(front: str, env: tuple, backend: dict[str, Any], steps: int = 120) -> list[Any]:
    """Everything a trainer sees over ``steps`` steps with fixed actions (and, with Gymnasium, a
    partial reset of env 1 on the way), then the sub-envs' own step counts."""
    env_fn, kwargs = env
    out: list[Any] = []
    if front == "sb3":
        venv = nw.make_vec_env(env_fn, num_envs=4, seed=0, **kwargs, **backend)
        out += [venv.reset(), venv.reset_infos]
    else:
        venv = nw.make_vector_env(env_fn, num_envs=4, autoreset_mode=front, **kwargs, **backend)
        out += venv.reset(seed=0)
    n = venv.num_envs
    actions = np.random.default_rng(0).integers(0, int(venv.action_space.n if front == "sb3" else
                                                       venv.single_action_space.n), size=(steps, n))
    for t, a in enumerate(actions):
        if front == "sb3":
            obs, rew, done, infos = venv.step(a)
            for info in infos:
                info.get("episode", {}).pop("t", None)  # wall time
            out += [obs, rew, done, infos, list(venv.reset_infos)]
        else:
            if t == steps // 2:
                mask = np.repeat([False, True, False, False], n // 4)
                out += venv.reset(options={"reset_mask": mask})
            step = venv.step(a)
            step[4].get("final_info", {}).get("episode", {}).pop("t", None)  # wall time
            out += step
        out.append(venv.slot_alive())
    out.append(venv.get_attr("render_mode"))
    venv.close()
    return out


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("front", "env"), [("sb3", BATTLE), ("same_step", TAG), ("next_step", BATTLE)],
                         ids=["sb3-battle", "gym-same_step-tag", "gym-next_step-battle"])
def test_same_results_as_the_process_backend_and_in_process(cluster: Cluster, front: str, env: tuple) -> None:
    in_process = trajectory(front, env, {})
    processes = trajectory(front, env, {"num_workers": 2})
    on_ray = trajectory(front, env, {"num_workers": 2, "backend": "ray", "worker_resources": PINNED})
    assert_equal(in_process, processes)
    assert_equal(in_process, on_ray)
    flat = str(in_process)
    assert nw.EPISODE_KEY in flat  # episodes ended and envs reset
    if env is BATTLE:
        assert nw.PADDING_KEY in flat  # agents died mid-episode


@pytest.mark.timeout(180)
def test_npc_train_trains_ppo_through_ray_workers(cluster: Cluster, tmp_path: Path) -> None:
    """A real npc-train run (SB3 PPO's learn, a few thousand steps) with trainer.backend=ray; its
    evaluations play in this process."""
    from npc_wrapper.cli.config import compose_config
    from npc_wrapper.cli.train import train
    from tests.test_cli import SMALL

    run_dir = tmp_path / "runs" / "ray"
    cfg = compose_config([*SMALL, "run=ray", f"run_dir={run_dir}", "trainer.total_timesteps=3072",
                          "trainer.num_workers=2", "trainer.backend=ray",
                          "+trainer.worker_resources.CPU=0.5"])
    result = train(cfg)
    assert result["step"] >= 3072 and (run_dir / "final.zip").is_file()
    with open(run_dir / "logs" / "progress.csv") as f:
        rows = f.read().splitlines()
    assert len(rows) >= 5 and "rollout/ep_len_mean" in rows[0]  # a row per rollout, with episodes
    assert result["eval"]["after"]["episodes"] == 4


class FaultyEnv(ScriptedParallelEnv):
    """The env reset with seed 1 raises at its 2nd step (once), and ends its process at its 4th."""

    def step(self, actions: dict) -> Any:
        if self.episode_id == 1 and self.num_steps == 1 and not getattr(self, "raised", False):
            self.raised = True
            raise ZeroDivisionError("boom at step 2")
        if self.episode_id == 1 and self.num_steps == 3:
            os._exit(1)
        return super().step(actions)


@pytest.mark.timeout(120)
def test_an_env_error_is_the_same_exception_and_a_crash_names_the_worker(cluster: Cluster) -> None:
    zeros = np.zeros(4, dtype=np.int64)
    kwargs = {"num_envs": 2, "npc": "random", "training_agents_pct": 0.67, "seed": 0}
    venv = nw.make_vec_env(FaultyEnv, **kwargs)
    venv.reset()
    venv.step(zeros)
    with pytest.raises(ZeroDivisionError) as in_process:
        venv.step(zeros)
    venv.close()

    venv = nw.make_vec_env(FaultyEnv, num_workers=2, backend="ray", **kwargs)
    venv.reset()
    venv.step(zeros)
    with pytest.raises(ZeroDivisionError) as on_ray:
        venv.step(zeros)
    assert str(on_ray.value) == str(in_process.value) and "in step" in str(on_ray.value.__cause__)
    assert venv.get_attr("raised", indices=[2]) == [True]  # the workers live on
    venv.step(zeros)
    venv.step(zeros)
    started = time.monotonic()
    died = (r"Ray worker 1 \(actor npc_wrapper-\w+-worker1, node [\d.]+, host .*\) failed during step: "
            r"The actor is dead because its worker process has died")
    with pytest.raises(RuntimeError, match=died):
        venv.step(zeros)
    assert time.monotonic() - started < 30
    venv.close()


@pytest.mark.timeout(120)
def test_workers_spread_over_the_nodes_a_killed_one_is_a_clear_error_and_close_leaves_nothing(
    cluster: Cluster,
) -> None:
    venv = nw.make_vector_env(tag_env, num_envs=4, npc="random", num_workers=2, backend="ray",
                              worker_resources=PINNED)
    backend = venv.engine.backend
    assert len({node["node_id"] for node in backend.nodes}) == 2  # one worker on each node
    assert sorted(our_actors()) == [f"{backend.name}-worker0", f"{backend.name}-worker1"]
    assert live_groups(backend.name) == ["CREATED"]
    venv.reset(seed=0)
    zeros = np.zeros(venv.num_envs, dtype=np.int64)
    venv.step(zeros)
    ray.kill(backend.actors[1])
    started = time.monotonic()
    killed = (r"Ray worker 1 .* failed during step: The actor is dead because it was killed by `ray.kill`.*"
              r"close\(\) it and make a new one")
    with pytest.raises(RuntimeError, match=killed):
        venv.step(zeros)
    assert time.monotonic() - started < 30
    with pytest.raises(RuntimeError, match=r"cannot go on after an earlier failure \(Ray worker 1 .*killed"):
        venv.step(zeros)
    venv.close()
    venv.close()
    assert our_actors() == [] and live_groups(backend.name) == []


class SlowEnv(ScriptedParallelEnv):
    """Takes 20 s over its second step."""

    def step(self, actions: dict) -> Any:
        if self.num_steps == 1:
            time.sleep(20)
        return super().step(actions)


@pytest.mark.timeout(120)
def test_a_step_past_the_timeout_fails_and_an_interrupt_is_clean(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    zeros = np.zeros(2, dtype=np.int64)
    monkeypatch.setattr(ray_workers, "STEP_TIMEOUT_S", 1.0)
    venv = nw.make_vec_env(SlowEnv, num_envs=1, npc="random", training_agents_pct=0.67, num_workers=1,
                           backend="ray", seed=0)
    venv.reset()
    venv.step(zeros)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"Ray worker 0 \(actor .*\) did not finish step within 1 s"):
        venv.step(zeros)
    with pytest.raises(RuntimeError, match=r"cannot go on after an earlier failure \(workers \[0\] did not "
                       r"answer"):
        venv.step(zeros)
    venv.close()  # the actor is still inside its step: close does not wait for it
    assert time.monotonic() - started < 10

    monkeypatch.undo()
    venv = nw.make_vec_env(SlowEnv, num_envs=1, npc="random", training_agents_pct=0.67, num_workers=1,
                           backend="ray", seed=0)
    # interrupt_main() does nothing while SIGINT is ignored, as in a suite started with nohup or
    # `trap '' INT`: Python's own handler stands in for the test.
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        venv.reset()
        venv.step(zeros)
        timer = threading.Timer(1.0, _thread.interrupt_main)
        timer.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            venv.step(zeros)
        assert time.monotonic() - started < 10
        with pytest.raises(RuntimeError, match=r"cannot go on after an earlier failure \(KeyboardInterrupt"):
            venv.step(zeros)
    finally:
        signal.signal(signal.SIGINT, handler)
        venv.close()  # also when an assertion failed: a live placement group would fail the next tests


@pytest.mark.timeout(120)
def test_a_package_missing_on_a_node_names_the_node_and_the_package(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module only this process has (the workers cannot import it), as an env package installed on the
    # learner's node only; the factory pickles by reference to it, as cloudpickle does for any package.
    module = types.ModuleType("npc_only_on_the_learner")
    exec("from tests.envs import ScriptedParallelEnv\ndef make():\n    return ScriptedParallelEnv()\n",
         module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    missing = (r"No module named 'npc_only_on_the_learner' on Ray worker 0 \(actor npc_wrapper-\w+-worker0, "
               r"node [\d.]+, host .*\): install the env's package on every node of the Ray cluster")
    with pytest.raises(ModuleNotFoundError, match=missing) as err:
        nw.make_vec_env(module.make, num_envs=1, num_workers=1, backend="ray")
    assert err.value.name == "npc_only_on_the_learner"


@pytest.mark.timeout(60)
def test_bad_backend_arguments_are_refused_before_anything_starts(cluster: Cluster) -> None:
    make = lambda **kw: nw.make_vec_env(ScriptedParallelEnv, num_envs=2, **kw)  # noqa: E731
    cases = [
        ({"backend": "dask", "num_workers": 2},
         r"backend='dask' is not a backend; use one of 'process', 'ray'"),
        ({"backend": "ray"}, r"backend='ray' needs num_workers >= 1 .*got num_workers=0"),
        ({"backend": "ray", "num_workers": 2, "start_method": "spawn"}, r"start_method='spawn' applies to "
         r"backend='process' only"),
        ({"num_workers": 2, "ray_address": "127.0.0.1:6379"}, r"ray_address='127.0.0.1:6379' applies to "
         r"backend='ray' only"),
        ({"num_workers": 2, "worker_resources": {"CPU": 1}}, r"worker_resources=\{'CPU': 1\} applies to "
         r"backend='ray' only"),
        ({"backend": "ray", "num_workers": 2, "worker_resources": {"CPU": -1}},
         r"worker_resources\['CPU'\] must be a finite number >= 0, got -1"),
        ({"backend": "ray", "num_workers": 2, "worker_resources": {"CPU": "1"}},
         r"worker_resources\['CPU'\] must be a finite number >= 0, got '1'"),
        ({"backend": "ray", "num_workers": 2, "worker_resources": ["CPU"]}, r"worker_resources must map Ray"),
        ({"backend": "ray", "num_workers": 2, "worker_resources": {"CPU": 0}}, r"reserves nothing"),
        ({"backend": "ray", "num_workers": 2, "worker_resources": {"CPU": 64}},
         r"cannot hold the workers: 2 workers of \{'CPU': 64.0\} need \{'CPU': 128.0\}, the cluster has "
         r"\{'CPU': 4.0\} in all; lower num_workers"),
        ({"backend": "ray", "num_workers": 1, "worker_resources": {"CPU": 1, "slot": 2}},
         r"no node of the cluster has \{'CPU': 1.0, 'slot': 2.0\} for one worker"),
        ({"backend": "ray", "num_workers": 2, "ray_address": "127.0.0.1:1"},
         r"ray_address='127.0.0.1:1', but this process is already connected to the Ray cluster at"),
        ({"backend": "ray", "num_workers": 3}, r"num_envs=2 must be a multiple of num_workers=3"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            make(**kwargs)
    assert [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"] == []


@pytest.mark.timeout(60)
def test_wait_for_nodes(cluster: Cluster) -> None:
    assert ray_workers.wait_for_nodes(2, timeout_s=10) == 2
    with pytest.raises(TimeoutError, match=r"only 2 of 3 Ray nodes joined the cluster at .* within 0.5 s"):
        ray_workers.wait_for_nodes(3, timeout_s=0.5, poll_s=0.1)
    assert ray.is_initialized()  # the test's own connection is left alone


def run_python(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, **env})


@pytest.mark.timeout(150)
def test_ray_address_connects_and_the_connection_is_released(cluster: Cluster) -> None:
    """A process that is not connected connects itself (to RAY_ADDRESS), disconnects when its last
    backend closes, and its workers end with it when it exits without closing."""
    proc = run_python("""
        import numpy as np, ray
        import npc_wrapper as nw
        from tests.envs import ScriptedParallelEnv
        kw = dict(num_envs=1, num_workers=1, backend="ray", seed=0, worker_resources={"CPU": 0.5})
        try:
            nw.make_vec_env(ScriptedParallelEnv, ray_address="127.0.0.1:1", **kw)
        except ConnectionError as e:
            print(e)
        venvs = [nw.make_vec_env(ScriptedParallelEnv, **kw) for _ in range(2)]
        for venv in venvs:
            venv.reset()
            venv.step(np.zeros(venv.num_envs, dtype=np.int64))
        print(ray.get_runtime_context().gcs_address)
        venvs[0].close()
        print("one closed, connected:", ray.is_initialized())
        venvs[1].close()
        print("both closed, connected:", ray.is_initialized())
        venv = nw.make_vec_env(ScriptedParallelEnv, **kw)
        venv.reset()
        print(venv.engine.backend.name)
    """, RAY_ADDRESS=cluster.address)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(
        "cannot reach the Ray cluster at ray_address='127.0.0.1:1' (ConnectionRefusedError"
    )
    assert lines[1:4] == [cluster.address, "one closed, connected: True", "both closed, connected: False"]
    deadline = time.monotonic() + 30  # the exited driver's actors end with its job
    while any(name.startswith(lines[4]) for name in our_actors()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(name.startswith(lines[4]) for name in our_actors())


@pytest.mark.timeout(60)
def test_without_ray_installed_the_error_names_the_extra(cluster: Cluster) -> None:
    proc = run_python("""
        import sys
        sys.modules["ray"] = None  # as if ray were not installed
        import npc_wrapper as nw
        from tests.envs import ScriptedParallelEnv
        venv = nw.make_vec_env(ScriptedParallelEnv, num_envs=2, num_workers=2)  # the other backends work
        venv.close()
        try:
            nw.make_vec_env(ScriptedParallelEnv, num_envs=2, num_workers=2, backend="ray")
        except ImportError as e:
            print(type(e).__name__, e)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "ImportError backend='ray' needs the ray package, which is not installed: "
        "pip install 'npc-wrapper[ray]'"
    )
