"""NPC pools on a running env: members drawn per env per episode, added and removed between episodes."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

import npc_wrapper as nw
from tests.envs import ScriptedParallelEnv

OBS = spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = spaces.Discrete(4)


def _const(action: int) -> nw.NPCPolicy:
    return nw.ConstantPolicy(OBS, ACT, action=action, name=f"const{action}")


def test_pool_weights_are_validated_and_renormalised() -> None:
    with pytest.raises(ValueError, match="non-negative numbers with a positive sum"):
        nw.NPCPool([_const(0), _const(1)], weights=[1.0, -1.0])
    pool = nw.NPCPool([_const(0), _const(1), _const(2)], weights=[1, 1, 2])
    pool.remove(0)
    np.testing.assert_allclose(pool.weights, [1 / 3, 2 / 3])
    with pytest.raises(ValueError, match="last member"):
        nw.NPCPool([_const(0)]).remove(0)


def test_members_are_drawn_per_env_and_removed_only_when_not_playing() -> None:
    pool = nw.NPCPool([_const(0), _const(1)])
    venv = nw.make_vec_env(lambda: ScriptedParallelEnv(max_steps=2), num_envs=8, npc=pool,
                           training_agents_pct=0.67, seed=0)
    venv.reset()
    playing = venv.engine.npc_playing()
    assert set(playing.tolist()) == {0, 1}  # 8 envs, 2 members: both drawn (seeded)
    with pytest.raises(ValueError, match="is playing in envs"):
        venv.engine.remove_npc(1)
    pool.set_weights([1.0, 0.0])
    for _ in range(2):  # every env's episode ends after 2 steps and redraws with the new weights
        _, _, dones, infos = venv.step(np.zeros(venv.num_envs, dtype=np.int64))
    assert dones.all() and {i[nw.EPISODE_KEY]["npc"] for i in infos} <= {"const0", "const1"}
    assert (venv.engine.npc_playing() == 0).all()
    removed = venv.engine.remove_npc(1)
    assert removed.name == "const1" and len(pool) == 1

    index = venv.add_npc(_const(3), weight=1.0)
    assert index == 1 and pool.weights is not None
    venv.close()


def test_added_weight_counts_in_a_uniform_pool_too() -> None:
    pool = nw.NPCPool([_const(0), _const(1)])
    pool.add(_const(2), weight=0.0)  # a weight-0 member is never drawn, uniform pool or not
    np.testing.assert_allclose(pool.weights, [0.5, 0.5, 0.0])
    assert 2 not in pool.draw(np.random.default_rng(0), 1000)
    pool.add(_const(3))  # no weight: the mean of the current ones
    np.testing.assert_allclose(pool.weights, [0.375, 0.375, 0.0, 0.25])
    uniform = nw.NPCPool([_const(0), _const(1)])
    uniform.add(_const(2))
    assert uniform.weights is None  # stays uniform
    with pytest.raises(ValueError, match="non-negative number, got -1"):
        uniform.add(_const(3), weight=-1)


def test_negative_member_indices_read_like_a_list_and_keep_the_playing_check() -> None:
    pool = nw.NPCPool([_const(0), _const(1)])
    venv = nw.make_vec_env(lambda: ScriptedParallelEnv(max_steps=2), num_envs=8, npc=pool,
                           training_agents_pct=0.67, seed=0)
    venv.reset()
    with pytest.raises(ValueError, match="NPC pool member 1 .* is playing in envs"):
        venv.engine.remove_npc(-1)  # -1 is member 1, which plays: refused, nothing shifted
    assert set(venv.engine.npc_playing().tolist()) == {0, 1}
    with pytest.raises(IndexError, match="member 2 does not exist: the pool has 2 members"):
        venv.engine.remove_npc(2)
    venv.close()
