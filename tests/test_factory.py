"""``make_vec_env`` and ``make_vector_env``: one interface for both front ends.

Their parameter lists are written out (they are the documented API), so this pins that they stay
the same list, with the same defaults, and reach the engine whole.
"""

from __future__ import annotations

import ast
import inspect
from typing import Any

import pytest

import npc_wrapper as nw
from npc_wrapper.engine import NPCEngine
from npc_wrapper.turn_engine import TurnEngine

#: Parameters only one front end has: Gymnasium's autoreset modes.
GYMNASIUM_ONLY = {"autoreset_mode"}
#: Factory parameters the factory itself consumes (the engine gets a list of env factories).
FACTORY_ONLY = {"env_fn", "num_envs", "seed"}


def parameters(fn: object) -> dict[str, object]:
    """Name -> default of ``fn``'s parameters, in order (``inspect.Parameter.empty`` when required)."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items() if name != "self"}


def test_both_factories_take_the_same_arguments_with_the_same_defaults() -> None:
    sb3, gym = parameters(nw.make_vec_env), parameters(nw.make_vector_env)
    assert {k: v for k, v in gym.items() if k not in GYMNASIUM_ONLY} == sb3
    assert list(sb3) == [k for k in gym if k not in GYMNASIUM_ONLY]  # the same order, for positional use


def test_every_engine_argument_is_a_factory_argument_with_the_same_default() -> None:
    engine = parameters(NPCEngine)
    engine.pop("env_fns")
    engine.pop("probe")  # the first env, which the factory builds to choose the engine
    turn = parameters(TurnEngine)  # the turn-based engine's own arguments
    engine["seat"], engine["dict_observations"] = turn["seat"], turn["dict_observations"]
    gym = parameters(nw.make_vector_env)
    assert engine == {k: v for k, v in gym.items() if k not in FACTORY_ONLY}



@pytest.mark.parametrize("factory", [nw.make_vec_env, nw.make_vector_env], ids=["sb3", "gym"])
def test_each_factory_passes_every_argument_on(factory: Any) -> None:
    """Every parameter reaches ``_engine`` under its own name (which gives the engine its own)."""
    tree = ast.parse(inspect.getsource(factory))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "_engine"]
    assert len(calls) == 1
    call = calls[0]
    passed = [a.id for a in call.args if isinstance(a, ast.Name)]
    passed += [k.arg for k in call.keywords if isinstance(k.value, ast.Name) and k.value.id == k.arg]
    assert sorted(passed) == sorted(parameters(factory))
