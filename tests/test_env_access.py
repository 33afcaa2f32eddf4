"""Reaching the sub-envs through both front ends and both backends: ``get_attr``, ``set_attr``,
``env_method`` / ``call``, ``env_is_wrapped`` and rendering, checked against what SB3's
``DummyVecEnv`` / ``SubprocVecEnv`` and Gymnasium's ``SyncVectorEnv`` / ``AsyncVectorEnv`` do."""

from __future__ import annotations

import sys
import threading
import types
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.wrappers.vector import HumanRendering
from pettingzoo.utils import BaseParallelWrapper
from pettingzoo.utils.wrappers import BaseWrapper, OrderEnforcingWrapper
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env.base_vec_env import tile_images

import npc_wrapper as nw
from npc_wrapper.agents import same_value
from tests.envs import RecordingParallelEnv, ScriptedParallelEnv, simple_tag

pytestmark = pytest.mark.timeout(120)

WORKERS = pytest.mark.parametrize("workers", [0, 2])


class UnpicklableError(Exception):
    """Holds a lock, so it cannot be pickled."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class TwoArgError(Exception):
    """Pickles, but does not unpickle: its ``__init__`` needs two arguments and ``args`` holds one."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a} and {b}")


class Probe(BaseParallelWrapper):
    """Counts the calls that reach it and tells which env of its chain holds an attribute."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.calls: Counter[str] = Counter()

    def ping(self) -> int:
        """How many times this env was pinged, this call included."""
        self.calls["ping"] += 1
        return self.calls["ping"]

    def render(self) -> Any:
        self.calls["render"] += 1
        return self.env.render()

    def holders(self, name: str) -> list[str]:
        """The types of the envs of the chain that hold ``name`` in their own ``__dict__``."""
        out, env = [], self
        while env is not None:
            if name in vars(env):
                out.append(type(env).__name__)
            env = vars(env).get("env", vars(env).get("aec_env"))
        return out

    def fail(self, kind: str) -> None:
        errors = {"value": ValueError("boom from the env"), "unpicklable": UnpicklableError("holds a lock"),
                  "two_args": TwoArgError("one", "two")}
        raise errors[kind]


class HumanProbe(Probe):
    """A ``render_mode="human"`` env: ``render()`` draws (here: counts) and returns nothing."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.render_mode = "human"

    def render(self) -> None:
        self.calls["render"] += 1


class SubMonitor(Monitor):
    pass


AGENTS = ["a_0", "a_1", "b_0", "b_1"]


def scripted(**kwargs: Any) -> Callable[[], Probe]:
    return lambda: Probe(ScriptedParallelEnv(agents=AGENTS, obs_shape=(4,), **kwargs))


def tag_probe() -> Probe:
    return Probe(RecordingParallelEnv(simple_tag()))


def pistonball() -> Probe:
    from pettingzoo.butterfly import pistonball_v6

    return Probe(pistonball_v6.parallel_env(n_pistons=4, max_cycles=20, render_mode="rgb_array"))


@pytest.fixture
def make() -> Iterator[Callable[..., Any]]:
    """Builds front end ``kind`` over ``num_envs`` sub-envs with 2 training agents each, seeded with
    0 (sub-env ``i`` with ``i``); closes every env it built at the end of the test."""
    built: list[Any] = []

    def build(kind: str, env_fn: Callable[[], Any], workers: int, num_envs: int = 2) -> Any:
        kwargs = {"num_envs": num_envs, "npc": "random", "training_agents_pct": 0.5, "num_workers": workers}
        if kind == "sb3":
            env = nw.make_vec_env(env_fn, seed=0, **kwargs)
            built.append(env)
            env.reset()
        else:
            env = nw.make_vector_env(env_fn, **kwargs)
            built.append(env)
            env.reset(seed=0)
        return env

    yield build
    for env in built:
        env.close()


def get(envs: Any, name: str) -> list[Any]:
    return list(envs.get_attr(name))


def call(envs: Any, name: str, *args: Any) -> list[Any]:
    return list(envs.env_method(name, *args) if isinstance(envs, nw.NPCVecEnv) else envs.call(name, *args))


def step(envs: Any, action: int = 0) -> np.ndarray:
    """One step with the same action for every slot; returns the done flags."""
    out = envs.step(np.full(envs.num_envs, action, dtype=np.int64))
    return out[2] if isinstance(envs, nw.NPCVecEnv) else out[2] | out[3]


# ------------------------------------------------------------------------------------ once per sub-env
@WORKERS
def test_methods_run_once_per_sub_env_and_each_slot_gets_it(kind: str, workers: int, make: Any) -> None:
    envs = make(kind, scripted(), workers)
    assert call(envs, "ping") == [1, 1, 1, 1]  # a second call per sub-env would answer 2
    assert [c["ping"] for c in get(envs, "calls")] == [1] * 4
    if kind == "sb3":
        assert envs.env_method("ping", indices=[1, 2, 3]) == [2, 2, 2]
        assert [c["ping"] for c in get(envs, "calls")] == [2, 2, 2, 2]
        assert envs.env_method("ping", indices=[0, 0]) == [3, 3]


@WORKERS
def test_human_render_draws_each_sub_env_once(kind: str, workers: int, make: Any) -> None:
    envs = make(kind, lambda: HumanProbe(ScriptedParallelEnv(agents=AGENTS)), workers)
    assert envs.render_mode == "human"
    frames = envs.render()
    assert frames is None if kind == "sb3" else frames == (None,) * 4
    assert [c["render"] for c in get(envs, "calls")] == [1] * 4


# ------------------------------------------------------------------------------------ errors in envs
@WORKERS
def test_errors_keep_their_type_and_the_workers_live_on(kind: str, workers: int, make: Any) -> None:
    envs = make(kind, scripted(), workers)
    with pytest.raises(AttributeError, match="no_such_attr"):
        envs.get_attr("no_such_attr")
    with pytest.raises(ValueError, match="boom from the env") as error:
        call(envs, "fail", "value")
    if workers:
        assert "in fail" in str(error.value.__cause__)  # the worker's traceback
    if kind == "sb3":
        assert not envs.has_attr("no_such_attr")  # SB3's has_attr needs the AttributeError
        assert envs.has_attr("max_steps")
    # Nothing above took a worker down.
    assert get(envs, "episode_id") == [0, 0, 1, 1]
    step(envs)
    assert get(envs, "num_steps") == [1] * 4


@WORKERS
def test_an_error_that_cannot_travel_is_a_runtime_error_naming_it(kind: str, workers: int, make: Any) -> None:
    envs = make(kind, scripted(), workers)
    with pytest.raises(RuntimeError if workers else UnpicklableError, match="holds a lock") as error:
        call(envs, "fail", "unpicklable")
    if workers:
        assert "UnpicklableError: holds a lock" in str(error.value)
    with pytest.raises(RuntimeError if workers else TwoArgError, match="one and two") as error:
        call(envs, "fail", "two_args")
    if workers:
        assert "TwoArgError: one and two" in str(error.value)
    assert get(envs, "episode_id") == [0, 0, 1, 1]


# ------------------------------------------------------------------------------------ slot indices
@WORKERS
def test_negative_slot_indices_count_from_the_end(workers: int, make: Any) -> None:
    venv = make("sb3", scripted(), workers, num_envs=4)
    assert venv.get_attr("episode_id", indices=-1) == [3]
    assert venv.get_attr("episode_id", indices=[-8, -3, 5, 7]) == [0, 2, 2, 3]
    assert venv.env_method("agent_index", "b_0", indices=[-1]) == [2]
    venv.set_attr("max_steps", 1, indices=-3)
    assert venv.get_attr("max_steps") == [10] * 4 + [1, 1] + [10] * 2
    assert venv.env_is_wrapped(ScriptedParallelEnv, indices=[-1]) == [True]
    out_of_range = r"slot index -?\d+ is out of range: there are 8 slots, so use -8 <= index < 8"
    for bad in (8, -9, [0, 8]):
        with pytest.raises(IndexError, match=out_of_range):
            venv.get_attr("episode_id", indices=bad)
    with pytest.raises(IndexError, match="out of range"):
        venv.env_method("ping", indices=[8])
    # Below the front end too: a sub-env index no worker holds is an IndexError, not a StopIteration.
    backend = venv.engine.backend
    assert backend.get_attr(-1, "episode_id") == 3
    with pytest.raises(IndexError, match=r"sub-env index 4 is out of range: there are 4 sub-envs"):
        backend.get_attr(4, "episode_id")
    assert venv.get_attr("episode_id") == [0, 0, 1, 1, 2, 2, 3, 3]  # and the workers still answer


# ------------------------------------------------------------------------------------ wrapper chains
@WORKERS
def test_names_resolve_through_pettingzoo_wrapper_chains(kind: str, workers: int, make: Any) -> None:
    # Probe -> RecordingParallelEnv -> aec_to_parallel_wrapper (.aec_env) -> OrderEnforcingWrapper ->
    # AssertOutOfBoundsWrapper -> raw_env, which alone owns max_cycles.
    envs = make(kind, tag_probe, workers)
    assert get(envs, "max_cycles") == [25] * 4
    assert call(envs, "holders", "max_cycles") == [["raw_env"]] * 4
    # set_attr sets it on the env that owns it (not on a wrapper forwarding to it), so the env obeys.
    if kind == "sb3":
        envs.set_attr("max_cycles", 3)
    else:
        envs.set_attr("max_cycles", [3, 3, 3, 3])
    assert call(envs, "holders", "max_cycles") == [["raw_env"]] * 4
    assert get(envs, "max_cycles") == [3] * 4
    assert [step(envs).tolist() for _ in range(3)] == [[False] * 4, [False] * 4, [True] * 4]
    # A name that no env of the chain has goes on the outermost one.
    envs.set_attr("my_flag", 7)
    assert get(envs, "my_flag") == [7] * 4
    assert call(envs, "holders", "my_flag") == [["Probe"]] * 4


@WORKERS
def test_gym_call_returns_an_attribute_that_is_not_callable(workers: int, make: Any) -> None:
    envs = make("gym", tag_probe, workers)
    assert envs.call("max_cycles") == (25,) * 4
    assert envs.call("ping") == (1,) * 4


@WORKERS
def test_sb3_env_is_wrapped_walks_the_chain_and_fakes_only_monitor(workers: int, make: Any) -> None:
    from mpe2.simple_tag.simple_tag import raw_env

    venv = make("sb3", tag_probe, workers)
    present = (Monitor, SubMonitor, Probe, RecordingParallelEnv, OrderEnforcingWrapper, BaseWrapper, raw_env)
    for wrapper in present:
        assert venv.env_is_wrapped(wrapper) == [True] * 4, wrapper
    for absent in (gymnasium.Wrapper, gymnasium.Env, gymnasium.wrappers.TimeLimit, ScriptedParallelEnv):
        assert venv.env_is_wrapped(absent) == [False] * 4, absent
    assert venv.env_is_wrapped(OrderEnforcingWrapper, indices=[-1]) == [True]


# ------------------------------------------------------------------------------------ set_attr values
@WORKERS
def test_gym_set_attr_refuses_different_values_within_a_sub_env(workers: int, make: Any) -> None:
    envs = make("gym", scripted(), workers)
    with pytest.raises(ValueError, match=r"slots 2-3 different values \[6, 7\]"):
        envs.set_attr("max_steps", [5, 5, 6, 7])
    assert envs.get_attr("max_steps") == (10,) * 4  # checked before anything is set
    envs.set_attr("max_steps", [5, 5, 6, 6])
    assert envs.get_attr("max_steps") == (5, 5, 6, 6)
    a, b = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    envs.set_attr("weights", [a, a.copy(), b, b.copy()])  # equal arrays are one value
    assert [w.tolist() for w in envs.get_attr("weights")] == [[1, 2], [1, 2], [3, 4], [3, 4]]
    with pytest.raises(ValueError, match="slots 0-1 different values"):
        envs.set_attr("weights", [a, b, b, b])
    cfgs = [{"goal": a.copy(), "path": [b.copy()]} for _ in range(4)]  # arrays nested in dicts and lists
    envs.set_attr("cfg", cfgs)
    assert all(same_value(c, cfgs[0]) for c in envs.get_attr("cfg"))
    with pytest.raises(ValueError, match="slots 2-3 different values"):
        envs.set_attr("cfg", cfgs[:3] + [{"goal": a, "path": [a]}])


# ------------------------------------------------------------------------------------ rendering
@WORKERS
def test_rgb_array_frames_one_per_slot_each_sub_env_rendered_once(kind: str, workers: int, make: Any) -> None:
    envs = make(kind, pistonball, workers)
    frames = envs.get_images() if kind == "sb3" else envs.render()
    assert len(frames) == 4
    assert [c["render"] for c in get(envs, "calls")] == [1] * 4
    assert frames[0].shape == (560, 240, 3) and frames[0].dtype == np.uint8
    np.testing.assert_array_equal(frames[0], frames[1])  # a sub-env's slots share its frame
    np.testing.assert_array_equal(frames[2], frames[3])
    assert not np.array_equal(frames[1], frames[2])  # sub-envs 0 and 1 differ (seeds 0 and 1)
    env1 = call(envs, "render")[2]
    np.testing.assert_array_equal(frames[2], env1)  # slot 2's frame is sub-env 1's
    if kind == "sb3":
        np.testing.assert_array_equal(envs.render("rgb_array"), tile_images([frames[0], frames[2]]))
        np.testing.assert_array_equal(envs.render(), tile_images([frames[0], frames[2]]))
        assert [c["render"] for c in get(envs, "calls")] == [4] * 4  # 1 + env_method + 2 renders


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour ``cv2.resize`` (``size`` is width, height), for the one call HumanRendering makes."""
    width, height = size
    return image[np.arange(height) * image.shape[0] // height][:, np.arange(width) * image.shape[1] // width]


@WORKERS
def test_gym_human_rendering_wrapper_accepts_our_frames(workers: int, make: Any, monkeypatch: Any) -> None:
    # HumanRendering asserts one frame per vector index, then scales them with OpenCV (not installed here).
    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(resize=_resize))
    envs = HumanRendering(make("gym", pistonball, workers))
    envs.reset(seed=0)
    envs.step(np.zeros((4, 1), dtype=np.float32))
    envs.close()


@WORKERS
def test_sb3_human_render_of_rgb_array_envs_shows_one_tile_per_sub_env(
    workers: int, make: Any, monkeypatch: Any
) -> None:
    shown: list[np.ndarray] = []
    cv2 = types.SimpleNamespace(imshow=lambda _name, image: shown.append(image), waitKey=lambda _ms: None)
    monkeypatch.setitem(sys.modules, "cv2", cv2)  # OpenCV is not installed here
    venv = make("sb3", pistonball, workers)
    frames = venv.get_images()
    assert venv.render("human") is None
    np.testing.assert_array_equal(shown[0], tile_images([frames[0], frames[2]])[:, :, ::-1])
    venv.close()


def test_sb3_get_images_without_rgb_array_warns_and_renders_nothing(make: Any) -> None:
    venv = make("sb3", scripted(), 0)
    assert venv.render_mode is None
    with pytest.warns(UserWarning, match="assumes it is `rgb_array`"):
        assert venv.get_images() == [None] * 4
    assert [c["render"] for c in venv.get_attr("calls")] == [0] * 4


# ------------------------------------------------------------------------------------ after close
@WORKERS
def test_access_after_close_is_the_closed_error(kind: str, workers: int, make: Any) -> None:
    probes: list[Probe] = []

    def env_fn() -> Probe:
        probes.append(Probe(ScriptedParallelEnv(agents=AGENTS, render_mode="rgb_array")))
        return probes[-1]

    envs = make(kind, env_fn, workers)
    envs.close()
    accesses = [lambda: envs.get_attr("episode_id"), lambda: envs.set_attr("max_steps", 3),
                lambda: call(envs, "ping"), envs.render]
    if kind == "sb3":
        accesses += [envs.get_images, lambda: envs.env_is_wrapped(Probe)]
    for access in accesses:
        with pytest.raises(RuntimeError, match=r"this NPC vector env is closed; make a new one"):
            access()
    if not workers:
        assert [dict(p.calls) for p in probes] == [{}, {}]  # the closed envs were not touched
        assert [p.max_steps for p in probes] == [10, 10]
