"""Checkpoint writing (:mod:`npc_wrapper.checkpoints.store`): a save killed midway or a torn file
never replaces or hides the last good checkpoint, and the metadata lands before the checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from stable_baselines3 import PPO

import npc_wrapper as nw
from npc_wrapper.checkpoints.store import atomic_save, checkpoint_path, latest_checkpoint
from tests.envs import simple_tag


def _tiny_model() -> tuple[PPO, object]:
    venv = nw.make_vec_env(
        lambda: simple_tag(max_cycles=5),
        num_envs=1,
        npc="random",
        training_agents_pct=0.75,
        seed=0,
        device="cpu",
    )
    return PPO("MlpPolicy", venv, n_steps=8, batch_size=8, device="cpu", seed=0), venv


def test_a_save_killed_midway_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model, venv = _tiny_model()
    try:
        ckpts = tmp_path / "checkpoints"
        good = atomic_save(model, checkpoint_path(ckpts, 100), {"step": 100, "epoch": 1})
        good_bytes = good.read_bytes()

        def torn_save(path: object, *args: object, **kwargs: object) -> None:
            # What a kill during the write leaves: half a file, then nothing more happens.
            Path(str(path)).write_bytes(good_bytes[: len(good_bytes) // 2])
            raise KeyboardInterrupt

        monkeypatch.setattr(model, "save", torn_save)
        with pytest.raises(KeyboardInterrupt):
            atomic_save(model, checkpoint_path(ckpts, 200), {"step": 200, "epoch": 2})
        assert not checkpoint_path(ckpts, 200).exists()
        assert sorted(p.name for p in ckpts.iterdir()) == ["step_100.json", "step_100.zip"]
        assert latest_checkpoint(ckpts) == (100, good)
        assert PPO.load(str(good), device="cpu").num_timesteps == model.num_timesteps

        # A torn file that did reach its final name (e.g. copied in by hand) is skipped, not loaded.
        checkpoint_path(ckpts, 300).write_bytes(good_bytes[:1000])
        with caplog.at_level("WARNING"):
            assert latest_checkpoint(ckpts) == (100, good)
        assert "skipping unreadable checkpoint" in caplog.text
    finally:
        venv.close()


def test_checkpoint_metadata_is_written_before_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, venv = _tiny_model()
    seen: list[bool] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        if str(dst).endswith(".zip"):
            seen.append(Path(dst).with_suffix(".json").is_file())
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    try:
        atomic_save(model, tmp_path / "final.zip", {"step": 0, "epoch": 0})
    finally:
        venv.close()
    assert seen == [True]
