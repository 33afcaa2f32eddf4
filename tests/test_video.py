"""Videos of the learner against the NPC: npc-eval --video and npc-train's trainer.video, on real envs, read
back with imageio; envs that cannot render frames are refused before anything is played."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
from pettingzoo.utils import BaseParallelWrapper
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import npc_wrapper as nw
from npc_wrapper.cli import evaluate as eval_cli
from npc_wrapper.cli.errors import CLIError
from npc_wrapper.cli.train import train
from npc_wrapper.cli.video import TAG, VideoEnv, check_encoder
from tests.envs import ScriptedParallelEnv
from tests.test_cli import run_cfg

#: simple_tag's episodes are 25 steps long, so a video holds 25 frames per episode.
STEPS = 25

def test_npc_eval_video_writes_the_episodes_to_an_mp4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "eval.json"
    eval_cli.main([
        "random", "env=simple_tag", "device=cpu", "--episodes", "2", "--num-envs", "2",
        "--video-dir", str(tmp_path / "v"), "--json", str(out_json), "--video", "2",
    ])
    path = tmp_path / "v" / "random_seed12345.mp4"
    assert f"video of 2 episodes ({2 * STEPS} frames): {path}" in capsys.readouterr().out
    frames = iio.imread(path)
    assert frames.shape == (2 * STEPS, 700, 700, 3) and frames.dtype == np.uint8  # mpe2 renders 700x700
    assert frames.std() > 0 and not (frames[0] == frames[-1]).all()  # pictures of a game, and it moves
    written = json.loads(out_json.read_text())["video"]
    assert written == {"path": str(path), "episodes": 2, "frames": 2 * STEPS}
    assert not list((tmp_path / "v").glob(".partial-*"))


def test_npc_train_records_before_and_after_training_without_changing_the_run(tmp_path: Path) -> None:
    plain = train(run_cfg(tmp_path / "a"))
    run_dir = tmp_path / "b"
    filmed = train(run_cfg(
        run_dir, "trainer.video.enabled=true", "trainer.video.before=true", "trainer.video.episodes=1"
    ))
    step = filmed["step"]
    paths = [r.path for r in filmed["videos"]]
    assert paths == [run_dir / "videos/step_0.mp4", run_dir / f"videos/step_{step}.mp4"]
    for recording in filmed["videos"]:
        assert recording.frames == STEPS and recording.fps == 10  # simple_tag's render_fps
        assert iio.imread(recording.path).shape == (STEPS, 700, 700, 3)
    # The model's actions in the videos come from a fork of torch's generator: the same run as without them.
    assert filmed["eval"] == plain["eval"]
    tb = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    tb.Reload()
    previews = tb.Images(TAG)  # the GIF add_video would write, at each recording's step
    assert [(p.step, p.width, p.height) for p in previews] == [(0, 234, 234), (step, 234, 234)]
    assert previews[0].encoded_image_string.startswith(b"GIF8")


def test_an_env_that_cannot_render_frames_is_refused_before_training(tmp_path: Path) -> None:
    pytest.importorskip("mettagrid")
    run_dir = tmp_path / "m"
    cfg = run_cfg(run_dir, "env=mettagrid_arena", "env.factory.num_agents=2", "trainer.video.enabled=true")
    with pytest.raises(CLIError, match=(
        r"^trainer.video.enabled: env 'mettagrid_arena' cannot be recorded: its factory "
        r"npc_wrapper.cli.envs.mettagrid_arena takes no render_mode argument"
    )):
        train(cfg)
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "eval.json").exists()


class NoFrames(BaseParallelWrapper):
    """Takes ``render_mode="rgb_array"`` but renders nothing, as MettaGrid's PettingZoo env does."""

    def render(self) -> Any:
        return None


def test_video_env_refuses_an_env_without_rgb_array_frames() -> None:
    for env_fn, why in (
        (lambda: ScriptedParallelEnv(), "its render_mode is None"),
        (lambda: NoFrames(ScriptedParallelEnv(render_mode="rgb_array")), r"render\(\) gave NoneType"),
    ):
        venv = nw.make_vec_env(env_fn, num_envs=1, npc="random", training_agents_pct=0.5, seed=0)
        with pytest.raises(CLIError, match=f"^--video: env 'scripted' cannot be recorded: .*{why}"):
            VideoEnv(venv, "scripted", "--video")
        venv.close()


def test_a_missing_encoder_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> str:
        raise RuntimeError("No ffmpeg exe could be found")

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", missing)
    with pytest.raises(CLIError, match=r"^--video needs imageio with ffmpeg .*'npc-wrapper\[video\]'"):
        check_encoder("--video")
