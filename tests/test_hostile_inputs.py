"""Bad input at the API boundary and NPCs that misbehave (issue #14, findings 4 and 6, and beyond them).

Every test goes through the public entry points (``make_vec_env``, ``make_vector_env``, the vector
envs' methods) on :class:`tests.envs.ScriptedParallelEnv` (agents ``a_0``, ``a_1`` train, ``b_0`` is
the NPC, by the default ``training_agents_pct=0.5``).

Each test reproduced a finding that failed on the code of its time (they were strict xfails
until fixed); now each guards its fix.

Assumptions the implementer may adapt (names only, never the strength of an assertion):

* argument errors are ``TypeError`` (wrong type) or ``ValueError`` (wrong value), one line, naming
  the argument; a wrong type says what type is wanted ("int"/"integer", "float"/"number", ...);
* an NPC's NaN output is a ``ValueError`` naming the NPC; once the env steps, it also names the env
  (``env <i>``) and the step;
* ``step_async`` twice without ``step_wait`` is a ``RuntimeError`` (the state error the engine
  already raises for a ``step`` before ``reset``) naming ``step_async``/``step_wait``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import npc_wrapper as nw
from tests import hostile
from tests.envs import ScriptedParallelEnv
from tests.hostile import NaNLogits, one_line_naming

#: A ScriptedParallelEnv that sends any action on (real envs such as mpe2 check nothing either), so
#: only the wrapper stands between a bad action and the env.
LAX = functools.partial(ScriptedParallelEnv, validate_actions=False)


def step_a_few(venv: Any, steps: int = 5) -> None:
    venv.reset()
    for _ in range(steps):
        venv.step(np.zeros(venv.num_envs, dtype=np.int64))


def error_playing(npc: Any, num_envs: int = 1) -> str:
    """The message of the ``ValueError`` that building a vector env with ``npc`` and stepping it raises."""
    with pytest.raises(ValueError) as exc:
        venv = nw.make_vec_env(ScriptedParallelEnv, num_envs=num_envs, npc=npc, device="cpu", seed=0)
        try:
            step_a_few(venv)
        finally:
            venv.close()
    return str(exc.value)


# ---------------------------------------------------------------------------------- 4. NaN NPCs
def test_nan_logits_of_a_torch_npc_are_an_error_naming_it() -> None:
    """A diverged network (NaN logits for every input) must not play action 0 forever."""
    message = error_playing(NaNLogits())
    one_line_naming(message, "NaNLogits")
    assert "nan" in message.lower()


def test_nan_logits_at_a_later_step_are_an_error_naming_the_npc_env_and_step() -> None:
    """NaN only from step 3 on (past the construction's dry run): the error names the NPC, the env and
    the step."""
    message = error_playing(NaNLogits(from_step=3.0), num_envs=2)
    one_line_naming(message, "NaNLogits")
    assert "nan" in message.lower() and re.search(r"\benv\b", message) and "step" in message, message


def test_sb3_checkpoint_with_nan_weights_is_an_error_naming_it(tmp_path: Path) -> None:
    path = hostile.sb3_model_zip(tmp_path / "diverged.zip", nan_weights=True)
    message = error_playing(f"file://{path}")
    one_line_naming(message, "diverged")
    assert "nan" in message.lower()


def test_a_callable_returning_nan_is_refused() -> None:
    """What already holds for callables (the issue's contrast)."""
    with pytest.raises(ValueError, match="nan"):
        nw.make_vec_env(ScriptedParallelEnv, npc=lambda obs: np.full(len(obs), np.nan), device="cpu")


def later_strings(obs: np.ndarray) -> np.ndarray:
    """An NPC callable that returns valid actions on the dry run and strings from step 2 on."""
    if (obs[:, 0] >= 2).any():
        return np.array(["up"] * len(obs))
    return np.zeros(len(obs), dtype=np.int64)


def test_a_callable_returning_strings_later_is_an_error_naming_it() -> None:
    one_line_naming(error_playing(later_strings), "later_strings")


# --------------------------------------------------------------------- 6. arguments of the wrong kind
def test_env_fn_returning_none_is_a_type_error_naming_env_fn() -> None:
    with pytest.raises(TypeError) as exc:
        nw.make_vec_env(lambda: None)
    one_line_naming(str(exc.value), "env_fn")


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("num_envs", "4"),
        ("num_envs", 4.5),
        ("num_envs", None),
        ("num_envs", "abc"),
        ("num_envs", True),
        ("num_workers", "4"),
        ("num_workers", 4.5),
        ("num_workers", None),
        ("num_workers", "abc"),
        ("num_workers", True),
        ("seed", "4"),
        ("seed", 4.5),
        ("seed", "abc"),
        ("seed", True),
        ("training_agents_pct", "0.5"),
    ],
)
def test_an_argument_of_the_wrong_type_is_a_type_error_naming_it(argument: str, value: Any) -> None:
    with pytest.raises(TypeError) as exc:
        nw.make_vec_env(ScriptedParallelEnv, **{argument: value}).close()
    message = str(exc.value)
    one_line_naming(message, argument)
    assert re.search(r"\bint|integer|float|number|fraction", message), message


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("num_envs", -1),
        ("num_envs", 0),
        ("num_workers", -1),
        ("seed", -1),
    ],
)
def test_an_argument_out_of_range_is_a_value_error_naming_it(argument: str, value: Any) -> None:
    with pytest.raises(ValueError) as exc:
        nw.make_vec_env(ScriptedParallelEnv, **{argument: value}).close()
    one_line_naming(str(exc.value), argument)


@pytest.mark.parametrize("device", ["cudax", "tpu", 7])
def test_a_bad_device_is_refused_even_when_no_npc_uses_it(make_venv: Any, device: Any) -> None:
    with pytest.raises((TypeError, ValueError)) as exc:
        make_venv(ScriptedParallelEnv, npc="random", device=device).close()
    one_line_naming(str(exc.value), "device")


@pytest.mark.parametrize(
    "actions",
    [
        np.ones(4, dtype=bool),
        np.ones(4, dtype=np.complex128),
        np.full(4, 1 + 1j),
        np.array([1, 2, 3, 1], dtype=object),
    ],
    ids=["bool", "complex", "complex-fraction", "object"],
)
def test_actions_of_a_non_numeric_dtype_are_refused_naming_it(make_venv: Any, actions: np.ndarray) -> None:
    venv = make_venv(LAX, num_envs=2, device="cpu")
    try:
        if make_venv is nw.make_vec_env:
            venv.reset()
        else:
            venv.reset(seed=0)
        with pytest.raises((TypeError, ValueError)) as exc:
            venv.step(actions)
    finally:
        venv.close()
    one_line_naming(str(exc.value), str(actions.dtype))


def test_step_async_twice_is_refused() -> None:
    venv = nw.make_vec_env(ScriptedParallelEnv, num_envs=2, device="cpu", seed=0)
    try:
        venv.reset()
        venv.step_async(np.zeros(4, dtype=np.int64))
        with pytest.raises(RuntimeError) as exc:
            venv.step_async(np.ones(4, dtype=np.int64))
        one_line_naming(str(exc.value), "step_async")
    finally:
        venv.close()


# ------------------------------------------------------------------------------------ big numbers
def test_a_billion_envs_are_refused_up_front() -> None:
    """``make_vec_env(..., num_envs=10**9)`` builds a list of 10**9 factories (8 GB) before anything
    else; it should be refused at once, naming num_envs, within a few hundred MB."""
    run = hostile.run_bounded(
        """
        import npc_wrapper as nw
        from tests.envs import ScriptedParallelEnv
        ready()
        result({"error": error_of(nw.make_vec_env, ScriptedParallelEnv, num_envs=10**9)})
        """,
        seconds=5.0,
        memory_mb=500,
    )
    assert run.killed is None, f"killed for {run.killed} after {run.seconds:.1f} s at +{run.peak_mb:.0f} MiB"
    error = run.result["error"]
    assert error is not None and "ValueError" in error["mro"], error
    one_line_naming(error["message"], "num_envs")
