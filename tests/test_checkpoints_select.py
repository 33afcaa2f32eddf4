"""Selectors over directories of real checkpoints, and NPC pools built from them.

Each checkpoint is a state_dict of a network whose argmax is a fixed action ``k`` (``fixed_k``),
so the action an NPC takes shows which checkpoint drives it.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

import npc_wrapper as nw
from npc_wrapper.checkpoints import load_npc, select_checkpoints
from npc_wrapper.errors import CheckpointError
from npc_wrapper.npcs.pool import NPCPool
from tests.checkpoint_agents import ObsRecordingEnv, fixed_action_agent
from tests.envs import ScriptedParallelEnv

OBS = ScriptedParallelEnv().observation_space("a_0")
ACT = ScriptedParallelEnv().action_space("a_0")
CLASS = "tests.checkpoint_agents:MLPAgent"
KWARGS = {"obs_dim": 3, "n_actions": 4}
EPISODE = nw.EPISODE_KEY


def write_fixed(root: Path, name: str, action: int, meta: dict | None = None, sidecar: str = "stem") -> Path:
    path = root / f"{name}.pt"
    torch.save(fixed_action_agent(3, 4, action).state_dict(), path)
    if meta is not None:
        side = root / (f"{name}.json" if sidecar == "stem" else f"{name}.pt.json")
        side.write_text(json.dumps(meta))
    return path


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    """fixed_0..fixed_3 with epochs 1..4 and scores 0.5, 0.9, 0.1, 0.7 (fixed_3 uses <file>.json)."""
    root = tmp_path / "ckpts"
    root.mkdir()
    scores = [0.5, 0.9, 0.1, 0.7]
    for k in range(4):
        write_fixed(
            root, f"fixed_{k}", k, {"epoch": k + 1, "score": scores[k]}, sidecar="file" if k == 3 else "stem"
        )
    (root / "notes.txt").write_text("not a checkpoint")
    return root


def cfg(uri: Path | str, **kw) -> nw.CheckpointConfig:
    return nw.CheckpointConfig(uri=str(uri), policy_class=CLASS, policy_kwargs=KWARGS, **kw)


def names(cands) -> list[str]:
    return [c.name for c in cands]


def actions_of(policy, n: int = 2) -> list[int]:
    policy.reset(n, seed=0)
    return policy.act(np.zeros((n, 3), np.float32), np.arange(n), np.ones(n, bool)).tolist()


# ------------------------------------------------------------------------------- selectors
def test_specific_file_and_metadata(ckpt_dir: Path) -> None:
    (c,) = select_checkpoints(f"file://{ckpt_dir / 'fixed_3.pt'}")
    assert c.name == "fixed_3" and c.metadata == {"epoch": 4, "score": 0.7}
    policy = load_npc(cfg(ckpt_dir / "fixed_1.pt"), OBS, ACT, deterministic=True)
    assert policy.name == "fixed_1" and actions_of(policy) == [1, 1]


def test_specific_on_a_directory_of_several_is_an_error(ckpt_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="type 'specific' needs the uri to name one") as err:
        select_checkpoints(cfg(ckpt_dir))
    assert "fixed_0" in str(err.value) and str(ckpt_dir) in str(err.value)


def test_latest(ckpt_dir: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="npc_wrapper"):
        assert names(select_checkpoints(cfg(ckpt_dir, type="latest"))) == ["fixed_3"]
    assert "ordered by metadata 'epoch'" in caplog.text
    assert names(select_checkpoints(cfg(ckpt_dir, type="latest", range=2))) == ["fixed_3", "fixed_2"]
    policy = load_npc(cfg(ckpt_dir, type="latest"), OBS, ACT, deterministic=True)
    assert actions_of(policy) == [3, 3]


def test_latest_by_file_name_number_then_mtime(tmp_path: Path) -> None:
    for n in (9, 10, 2):
        write_fixed(tmp_path, f"ckpt_{n}", n % 4)
    assert names(select_checkpoints(cfg(tmp_path, type="latest"))) == ["ckpt_10"]  # not lexicographic
    other = tmp_path / "named"
    other.mkdir()
    for i, name in enumerate(["gamma", "alpha", "beta"]):
        os.utime(write_fixed(other, name, 0), (1_000_000 + i, 1_000_000 + i))
    assert names(select_checkpoints(cfg(other, type="latest", range=2))) == ["beta", "alpha"]


def test_latest_sb3_models_by_num_timesteps(tmp_path: Path) -> None:
    venv = nw.make_vec_env(lambda: ScriptedParallelEnv(), num_envs=1, training_agents=["a_0", "a_1"], seed=0)
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=8, n_epochs=1, seed=0)
    model.save(tmp_path / "zz_untrained.zip")
    model.learn(16)
    model.save(tmp_path / "aa_trained.zip")
    venv.close()
    (c,) = select_checkpoints(str(tmp_path / "aa_trained.zip"))
    assert (
        c.metadata["num_timesteps"] == model.num_timesteps > 0 and c.metadata["epoch"] == model.num_timesteps
    )
    assert names(select_checkpoints(nw.CheckpointConfig(uri=str(tmp_path), type="latest"))) == ["aa_trained"]


def test_top_by_metric(ckpt_dir: Path) -> None:
    assert names(select_checkpoints(cfg(ckpt_dir, type="top", range=2, metric="score"))) == [
        "fixed_1",
        "fixed_3",
    ]
    assert names(select_checkpoints(cfg(ckpt_dir, type="top", metric="epoch"))) == ["fixed_3"]


def test_top_breaks_ties_by_recency(tmp_path: Path) -> None:
    for step, win_rate in ((200, 0.5), (300, 0.5), (100, 0.7), (1000, 0.2)):
        write_fixed(tmp_path, f"step_{step}", 0, {"step": step, "win_rate": win_rate})
    top = names(select_checkpoints(cfg(tmp_path, type="top", range=3, metric="win_rate")))
    assert top == ["step_100", "step_300", "step_200"]


def test_top_with_a_missing_metric_names_it_and_the_keys(ckpt_dir: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        select_checkpoints(cfg(ckpt_dir, type="top", metric="elo"))
    msg = str(err.value)
    assert "metadata['elo']" in msg and "['epoch', 'score']" in msg and "fixed_0" in msg


def test_top_ranks_the_checkpoints_that_have_the_metric(ckpt_dir: Path, caplog) -> None:
    # A run's early checkpoints often have no win_rate yet (no episode had ended when they were saved).
    (ckpt_dir / "fixed_1.json").write_text('{"epoch": 2}')
    with caplog.at_level(logging.WARNING, logger="npc_wrapper.checkpoints"):
        top = names(select_checkpoints(cfg(ckpt_dir, type="top", range=3, metric="score")))
    assert top == ["fixed_3", "fixed_0", "fixed_2"]
    assert "['fixed_1'] in" in caplog.text and "have no 'score' and are not ranked" in caplog.text
    with pytest.raises(CheckpointError, match=r"range=4 .* only 3 checkpoints .*\(\['fixed_1'\] do not\)"):
        select_checkpoints(cfg(ckpt_dir, type="top", range=4, metric="score"))


def test_non_finite_metric_or_step_is_an_error_naming_the_checkpoint(ckpt_dir: Path) -> None:
    # JSON allows NaN, and NaN compares false with everything: sorted() would rank it anywhere.
    (ckpt_dir / "fixed_2.json").write_text('{"epoch": 3, "score": NaN}')
    with pytest.raises(CheckpointError, match=r"metadata\['score'\] is not a finite number for \['fixed_2'"):
        select_checkpoints(cfg(ckpt_dir, type="top", metric="score"))
    (ckpt_dir / "fixed_2.json").write_text('{"epoch": Infinity, "score": 0.1}')
    for kind in ("latest", "all"):
        with pytest.raises(CheckpointError, match=r"metadata\['epoch'\] is not a finite number for \['fixed"):
            select_checkpoints(cfg(ckpt_dir, type=kind))


def test_rand_is_seeded(ckpt_dir: Path) -> None:
    a = names(select_checkpoints(cfg(ckpt_dir, type="rand", range=2, seed=5)))
    assert a == names(select_checkpoints(cfg(ckpt_dir, type="rand", range=2, seed=5)))
    assert len(set(a)) == 2
    draws = {tuple(names(select_checkpoints(cfg(ckpt_dir, type="rand", range=2, seed=s)))) for s in range(12)}
    assert len(draws) > 3


def test_all(ckpt_dir: Path) -> None:
    assert names(select_checkpoints(cfg(ckpt_dir, type="all"))) == [
        "fixed_0",
        "fixed_1",
        "fixed_2",
        "fixed_3",
    ]
    pool = load_npc(cfg(ckpt_dir, type="all"), OBS, ACT, deterministic=True)
    assert isinstance(pool, NPCPool)
    assert [m.name for m in pool.members] == ["fixed_0", "fixed_1", "fixed_2", "fixed_3"]
    assert [actions_of(m, 1) for m in pool.members] == [[0], [1], [2], [3]]


def test_range_larger_than_the_directory(ckpt_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="range=5 needs 5 checkpoints, but .* holds 4"):
        select_checkpoints(cfg(ckpt_dir, type="top", range=5))


def test_bad_sidecar_json_names_the_file(ckpt_dir: Path) -> None:
    (ckpt_dir / "fixed_2.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON") as err:
        select_checkpoints(cfg(ckpt_dir, type="all"))
    assert str(ckpt_dir / "fixed_2.json") in str(err.value)


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(CheckpointError, match="holds no checkpoint files"):
        select_checkpoints(str(tmp_path))


def test_weights_must_match_the_selection(ckpt_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="weights has 2 entries but 4 checkpoints were selected"):
        load_npc(cfg(ckpt_dir, type="all", weights=[1, 1]), OBS, ACT)


def test_pool_with_a_corrupt_member_fails_whole(ckpt_dir: Path) -> None:
    data = (ckpt_dir / "fixed_2.pt").read_bytes()
    (ckpt_dir / "fixed_2.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        load_npc(cfg(ckpt_dir, type="all"), OBS, ACT)
    assert "fixed_2.pt" in str(err.value)


# ------------------------------------------------------------------------------------ pools
def run_pool(spec, seed: int, steps: int, num_envs: int = 4, max_steps: int = 1):
    envs: list[ObsRecordingEnv] = []

    def make():
        envs.append(ObsRecordingEnv(ScriptedParallelEnv(max_steps=max_steps)))
        return envs[-1]

    venv = nw.make_vec_env(
        make, num_envs=num_envs, npc=spec, training_agents=["a_0", "a_1"], seed=seed, deterministic_npc=True
    )
    pool = venv.engine.pools[0]
    venv.reset()
    played: list[list[str | None]] = []
    for _ in range(steps):
        _, _, dones, infos = venv.step(np.zeros(2 * num_envs, dtype=np.int64))
        played.append([infos[2 * e][EPISODE]["npc"] if dones[2 * e] else None for e in range(num_envs)])
    venv.close()
    return envs, played, pool


def test_pool_draws_per_episode_seeded_with_weights(ckpt_dir: Path) -> None:
    weights = [0.4, 0.3, 0.2, 0.1]
    spec = cfg(ckpt_dir, type="all", weights=weights)
    envs, played, _ = run_pool(spec, seed=7, steps=300)
    drawn = [name for step in played for name in step]
    assert None not in drawn  # every step ends every 1-step episode
    freq = Counter(drawn)
    for k, w in enumerate(weights):
        assert abs(freq[f"fixed_{k}"] / len(drawn) - w) < 0.05
    # The NPC that played each episode is the one the episode info names.
    for e, env in enumerate(envs):
        acts = [int(a["b_0"]) for a in env.action_log]
        assert [f"fixed_{a}" for a in acts] == [step[e] for step in played]
    _, again, _ = run_pool(spec, seed=7, steps=300)
    assert again == played
    _, other, _ = run_pool(spec, seed=8, steps=300)
    assert other != played


def test_pool_runs_one_forward_per_member_per_step(ckpt_dir: Path) -> None:
    spec = cfg(ckpt_dir, type="top", range=3, metric="epoch")
    envs: list[ObsRecordingEnv] = []

    def make():
        envs.append(ObsRecordingEnv(ScriptedParallelEnv(max_steps=3)))
        return envs[-1]

    venv = nw.make_vec_env(
        make, num_envs=6, npc=spec, training_agents=["a_0", "a_1"], seed=0, deterministic_npc=True
    )
    pool = venv.engine.pools[0]
    assert [m.name for m in pool.members] == ["fixed_3", "fixed_2", "fixed_1"]
    calls: list[tuple[str, int]] = []
    for m in pool.members:
        m.module.register_forward_hook(lambda mod, inp, out, name=m.name: calls.append((name, len(inp[0]))))
    venv.reset()
    for _ in range(12):
        calls.clear()
        venv.step(np.zeros(12, dtype=np.int64))
        per_member = Counter(name for name, _ in calls)
        assert all(n == 1 for n in per_member.values())  # one batched forward per distinct member
        assert sum(rows for _, rows in calls) == 6  # covering the NPC row of every env
    venv.close()


def test_selected_checkpoint_drives_the_npcs(ckpt_dir: Path) -> None:
    envs, _, pool = run_pool(cfg(ckpt_dir, type="top", metric="score"), seed=0, steps=5)
    assert [m.name for m in pool.members] == ["fixed_1"]
    assert all(int(a["b_0"]) == 1 for env in envs for a in env.action_log)
