"""Videos of the learner playing the NPC: ``npc-train``'s ``trainer.video`` and ``npc-eval --video N``.

One PettingZoo env of its own, built with ``render_mode="rgb_array"``, plays whole episodes one after
another; every frame is the env's ``render()``, one picture of the whole env with all its agents,
taken after the reset and after every step (the last step's env has already been reset for the next
episode, so a video has one frame per step). The frames stream into an mp4 file written with
imageio's ffmpeg plugin (``pip install 'npc-wrapper[video]'``: imageio and imageio-ffmpeg, which
bundles an ffmpeg binary) under a hidden name and renamed when complete.

``npc-train`` also logs each video to TensorBoard, as the animated GIF ``SummaryWriter.add_video``
writes (made here with imageio: ``add_video`` needs moviepy < 2, whose ``moviepy.editor`` moviepy 2
removed), scaled down to at most :data:`PREVIEW_SIDE` pixels, and to W&B as ``wandb.Video`` of the
mp4 file when W&B is on. An env that cannot render ``rgb_array`` frames is refused before training.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat
from tensorboard.compat.proto.summary_pb2 import Summary

from npc_wrapper.cli.algos import ActionMaskVecEnv
from npc_wrapper.cli.build import TrainingPlan, build_vec_env
from npc_wrapper.cli.envs import EnvFactory
from npc_wrapper.cli.errors import CLIError, one_line, writing
from npc_wrapper.cli.model_eval import evaluate_model
from npc_wrapper.config import DualPolicyConfig

__all__ = [
    "PREVIEW_SIDE",
    "VIDEO_SEED_OFFSET",
    "TAG",
    "WANDB_KEY",
    "check_encoder",
    "render_factory",
    "Recording",
    "VideoEnv",
    "open_video_env",
    "TrainingVideo",
]

log = logging.getLogger("npc_wrapper.cli")

#: Longest side, in pixels, of the GIF preview logged to TensorBoard.
PREVIEW_SIDE = 320
#: Seed offset of the video env, apart from the training and evaluation envs.
VIDEO_SEED_OFFSET = 2_000_003
#: The TensorBoard tag of the videos (one per recording, at its step).
TAG = "video/vs_npc"
#: Their W&B key: apart from :data:`TAG`, which W&B's TensorBoard sync fills with the GIF previews.
WANDB_KEY = "video_mp4/vs_npc"
#: Plays episodes: ``play(venv, episodes, observe)``, calling ``observe`` as ``play_episodes`` does.
Player = Callable[[Any, int, Callable[[int], None]], Any]
#: Frames per second where the env's metadata gives no ``render_fps``.
_DEFAULT_FPS = 30


def check_encoder(option: str) -> None:
    """Refuse a video option when the mp4 encoder is missing (imageio with its ffmpeg plugin).

    :param option: the option that asks for videos, for the message
    :raises CLIError: naming the option and the install command
    """
    try:
        import imageio.v2  # noqa: F401  (optional: the video extra)
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as e:
        raise CLIError(
            f"{option} needs imageio with ffmpeg to write mp4 files: pip install 'npc-wrapper[video]' "
            f"({one_line(e)})"
        ) from e


def render_factory(env_fn: EnvFactory, env_name: str, option: str) -> EnvFactory:
    """``env_fn`` building its env with ``render_mode="rgb_array"`` (how mpe2, magent2, butterfly and other
    PettingZoo factories take it).

    :param env_fn: the configured env factory
    :param env_name: the env's name (``env.name``), for the message
    :param option: the option that asks for videos, for the message
    :raises CLIError: when the factory takes no ``render_mode``
    """
    if not env_fn.takes("render_mode"):
        raise CLIError(
            f"{option}: env {env_name!r} cannot be recorded: its factory {env_fn.factory[0]} takes no "
            "render_mode argument, and a video needs the env's render_mode='rgb_array' frames; drop the "
            "video option for this env"
        )
    return env_fn.with_arguments(render_mode="rgb_array")


@dataclass(frozen=True)
class Recording:
    """A video written by :class:`VideoEnv`."""

    #: The mp4 file.
    path: Path
    #: Frames in it (one per step played).
    frames: int
    #: Frames per second.
    fps: int
    #: The frames scaled down for TensorBoard, ``(T, H, W, 3)`` uint8.
    preview: np.ndarray


class _Recorder:
    """An ``observe`` of :func:`~npc_wrapper.evaluation.play_episodes` writing each frame as it comes."""

    def __init__(self, venv: Any, writer: Any, episodes: int) -> None:
        self.venv = venv
        self.writer = writer
        self.episodes = episodes
        self.frames = 0
        self.preview: list[np.ndarray] = []
        self._size: tuple[int, int] | None = None

    def __call__(self, done: int) -> None:
        if done >= self.episodes:  # the last step: its env has been reset already
            return
        frame = _rgb(self.venv.get_images()[0])
        if self._size is None:
            # libx264's yuv420p needs even sides: pad the first frame's to even, and every frame to that.
            self._size = (frame.shape[0] + frame.shape[0] % 2, frame.shape[1] + frame.shape[1] % 2)
        if frame.shape[:2] != self._size:
            padded = np.zeros((*self._size, 3), dtype=np.uint8)
            h, w = min(frame.shape[0], self._size[0]), min(frame.shape[1], self._size[1])
            padded[:h, :w] = frame[:h, :w]
            frame = padded
        self.writer.append_data(frame)
        stride = -(-max(frame.shape[:2]) // PREVIEW_SIDE)
        self.preview.append(frame[::stride, ::stride].copy())  # a copy: a view would keep the whole frame
        self.frames += 1


def _rgb(frame: Any) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 frame of ``render()``'s output (RGBA loses its alpha).

    :raises ValueError: for anything else (``None``, text)
    """
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] not in (3, 4):
        what = f"an array of shape {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"render() gave {what}, not an (H, W, 3) image")
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frame[:, :, :3])


class VideoEnv:
    """One env, rendering ``rgb_array`` frames, that plays the episodes of videos.

    :param venv: an NPC vector env of one sub-env built with :func:`render_factory`'s factory; checked here
        (reset and rendered once), and closed by :meth:`close`
    :param env_name: the env's name, for the messages
    :param option: the option that asks for videos, for the messages
    :param masked: give the player action masks (``MaskablePPO``): the env is wrapped in
        :class:`ActionMaskVecEnv`
    :raises CLIError: when the env does not render ``rgb_array`` frames
    """

    def __init__(self, venv: Any, env_name: str, option: str, masked: bool = False) -> None:
        self.fps = int(venv.metadata.get("render_fps") or _DEFAULT_FPS)
        refusal = f"{option}: env {env_name!r} cannot be recorded"
        if venv.render_mode != "rgb_array":
            raise CLIError(
                f"{refusal}: built with render_mode='rgb_array' its render_mode is {venv.render_mode!r} "
                f"(render modes: {venv.metadata.get('render_modes')}); drop the video option for this env"
            )
        venv.reset()
        try:
            _rgb(venv.get_images()[0])
        except ValueError as e:
            raise CLIError(f"{refusal}: {e}; drop the video option for this env") from e
        self.venv = ActionMaskVecEnv(venv) if masked else venv

    def record(self, play: Player, episodes: int, path: Path) -> Recording:
        """Play ``episodes`` episodes with ``play(venv, episodes, observe)`` and write them to ``path``.

        :param play: plays the episodes on the env it is given, calling ``observe`` as
            :func:`~npc_wrapper.evaluation.play_episodes` does
        :param episodes: episodes to record
        :param path: the mp4 file (replaced when it exists)
        """
        import imageio.v2 as imageio  # optional: the video extra (check_encoder says so first)

        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".partial-{path.name}")  # ffmpeg picks the container by the extension
        with writing("the video", path):
            writer = imageio.get_writer(
                partial, format="FFMPEG", mode="I", fps=self.fps, codec="libx264", macro_block_size=1,
                ffmpeg_log_level="error",
            )
            recorder = _Recorder(self.venv, writer, episodes)
            try:
                try:
                    play(self.venv, episodes, recorder)
                finally:
                    writer.close()
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)  # what a failed recording left
        return Recording(path, recorder.frames, self.fps, np.stack(recorder.preview))

    def close(self) -> None:
        self.venv.close()


def _log_tensorboard(logger: Logger, recording: Recording, step: int) -> None:
    """The recording as an animated GIF image summary, as ``SummaryWriter.add_video`` writes one."""
    import imageio.v3 as iio  # optional: the video extra

    gif = iio.imwrite("<bytes>", recording.preview, extension=".gif", duration=1000 / recording.fps, loop=0)
    _, h, w, c = recording.preview.shape
    image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=gif)
    for fmt in logger.output_formats:
        if isinstance(fmt, TensorBoardOutputFormat):
            fmt.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=TAG, image=image)]), step)
            fmt.writer.flush()


class TrainingVideo:
    """``npc-train``'s videos: ``runs/<run>/videos/step_<n>.mp4`` before (``trainer.video.before``) and after
    training, logged to TensorBoard and W&B.

    :param cfg: the job's config (``trainer.video``, ``seed``, ``trainer.eval_deterministic``)
    :param plan: the resolved config
    :param videos: the run's ``videos/`` directory
    :param masked: whether the model takes action masks (``MaskablePPO``)
    :param resumed: whether the session resumes the run (its ``before`` video is not recorded again)
    :raises CLIError: when the env cannot be recorded or the encoder is missing (before training)
    """

    def __init__(
        self, cfg: DictConfig, plan: TrainingPlan, videos: Path, masked: bool, resumed: bool
    ) -> None:
        self.cfg = cfg
        self.videos = videos
        self.resumed = resumed
        self.recordings: list[Recording] = []
        self.env: VideoEnv | None = None
        if cfg.trainer.video.enabled:
            self.env = open_video_env(cfg, plan.env_fn, plan.dual_policy, "trainer.video.enabled", masked)

    def before(self, model: Any, logger: Logger, wandb_run: Any) -> None:
        """Record the untrained model, when asked (``trainer.video.before``), in a new run.

        :param model: the SB3 model
        :param logger: the session's logger (TensorBoard)
        :param wandb_run: the W&B run, or ``None``
        """
        if self.cfg.trainer.video.before and not self.resumed:
            self._record(model, logger, wandb_run)

    def after(self, model: Any, logger: Logger, wandb_run: Any) -> None:
        """Record the trained model.

        :param model: the SB3 model
        :param logger: the session's logger (TensorBoard)
        :param wandb_run: the W&B run, or ``None``
        """
        self._record(model, logger, wandb_run)

    def _record(self, model: Any, logger: Logger, wandb_run: Any) -> None:
        if self.env is None:
            return
        step = int(model.num_timesteps)
        deterministic = bool(self.cfg.trainer.eval_deterministic)

        def play(venv: Any, episodes: int, observe: Callable[[int], None]) -> None:
            evaluate_model(model, venv, episodes, deterministic, observe)

        episodes = int(self.cfg.trainer.video.episodes)
        # The model samples its actions from torch's generator: recording on a fork of it leaves the run's
        # training and evaluations as they are without videos.
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            recording = self.env.record(play, episodes, self.videos / f"step_{step}.mp4")
        self.recordings.append(recording)
        _log_tensorboard(logger, recording, step)
        if wandb_run is not None:
            import wandb  # optional: the run has one, so wandb is installed

            wandb_run.log({WANDB_KEY: wandb.Video(str(recording.path), format="mp4")})
        log.info("video of %d episodes at step %d: %s", episodes, step, recording.path)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()


def open_video_env(
    cfg: DictConfig, env_fn: EnvFactory, dp: DualPolicyConfig, option: str, masked: bool = False,
    seed: int | None = None,
) -> VideoEnv:
    """The :class:`VideoEnv` of ``cfg``'s env: one sub-env in this process, ``render_mode="rgb_array"``.

    :param cfg: the job's config (``env``, ``device``, ``seed``)
    :param env_fn: the configured env factory
    :param dp: the agent split and the NPC
    :param option: the option that asks for videos, for the messages
    :param masked: give the player action masks (``MaskablePPO``)
    :param seed: the env's seed (default: ``seed`` + :data:`VIDEO_SEED_OFFSET`)
    :raises CLIError: when the encoder is missing or the env cannot be recorded
    """
    check_encoder(option)
    render_fn = render_factory(env_fn, str(cfg.env.name), option)
    seed = int(cfg.seed) + VIDEO_SEED_OFFSET if seed is None else seed
    venv = build_vec_env(cfg, render_fn, dp, 1, seed, num_workers=0)
    try:
        return VideoEnv(venv, str(cfg.env.name), option, masked)
    except BaseException:
        venv.close()
        raise
