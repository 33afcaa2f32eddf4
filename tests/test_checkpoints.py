"""Checkpoint NPCs: formats, safe loading, space fit and error messages, with real checkpoints.

Models are trained briefly with Stable-Baselines3 on our own wrapper (``simple_tag``: the three
adversaries train), saved, and loaded as the NPCs of the adversaries (``training_agents=["agent_0"]``),
so the recorded NPC actions can be compared with the model's own deterministic ``predict``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import pickle
import shlex
import shutil
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import ARS, QRDQN, TRPO, MaskablePPO, RecurrentPPO
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3

import npc_wrapper as nw
from npc_wrapper.checkpoints import detect_format, load_npc
from npc_wrapper.errors import CheckpointError, TrustRequiredError
from npc_wrapper.npcs.policies import SB3Policy, TorchPolicy
from tests.checkpoint_agents import (
    AtariStyleAgent,
    CleanRLAgent,
    MLPAgent,
    NoForward,
    ObsRecordingEnv,
    TinyExtractor,
    save_marker_torchscript,
)
from tests.envs import ScriptedParallelEnv, simple_tag

ADVERSARIES = ["adversary_0", "adversary_1", "adversary_2"]
SHIPPED = Path(nw.__file__).parent / "data" / "simple_tag_npc.zip"
TAG_OBS = spaces.Box(-np.inf, np.inf, (16,), np.float32)
TAG_ACT = spaces.Discrete(5)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """SB3 models trained for a few hundred steps on the adversaries of simple_tag, saved to zips."""
    root = tmp_path_factory.mktemp("sb3")
    venv = nw.make_vec_env(simple_tag, num_envs=2, training_agents_pct=0.75, seed=0)
    makers = {
        "ppo": lambda: PPO(
            "MlpPolicy",
            venv,
            n_steps=32,
            batch_size=64,
            n_epochs=2,
            seed=0,
            policy_kwargs={"net_arch": [32], "activation_fn": torch.nn.ReLU},
        ),
        "a2c": lambda: A2C("MlpPolicy", venv, n_steps=8, seed=0),
        "dqn": lambda: DQN("MlpPolicy", venv, learning_starts=0, train_freq=4, buffer_size=1000, seed=0),
        "recurrent_ppo": lambda: RecurrentPPO(
            "MlpLstmPolicy",
            venv,
            n_steps=32,
            batch_size=64,
            n_epochs=1,
            seed=0,
            policy_kwargs={"lstm_hidden_size": 16},
        ),
        "maskable_ppo": lambda: MaskablePPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0),
    }
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SB3's batch-size advice
        for name, make in makers.items():
            model = make()
            # MaskablePPO learns without masks here: our VecEnv has no action_masks(); loading is the point.
            model.learn(384, **({"use_masking": False} if name == "maskable_ppo" else {}))
            model.save(root / f"{name}.zip")
            out[name] = (root / f"{name}.zip", model)
    venv.close()
    return out


def run_as_npc(npc, steps: int = 30, num_envs: int = 2, **kwargs) -> list[ObsRecordingEnv]:
    """Run simple_tag with ``npc`` driving the adversaries; return the recording sub-envs."""
    envs: list[ObsRecordingEnv] = []

    def make():
        env = ObsRecordingEnv(simple_tag())
        envs.append(env)
        return env

    venv = nw.make_vec_env(
        make,
        num_envs=num_envs,
        npc=npc,
        training_agents=["agent_0"],
        seed=3,
        deterministic_npc=True,
        **kwargs,
    )
    rng = np.random.default_rng(0)
    venv.reset()
    for _ in range(steps):
        venv.step(rng.integers(0, 5, size=num_envs))
    venv.close()
    return envs


def recorded(envs: list[ObsRecordingEnv], agents: list[str] = ADVERSARIES) -> tuple[np.ndarray, np.ndarray]:
    """Observations and the NPC actions taken from them, for ``agents`` in every env and step."""
    obs, acts = [], []
    for env in envs:
        for o, a in zip(env.obs_log, env.action_log, strict=True):
            for agent in agents:
                if agent in a:
                    obs.append(o[agent])
                    acts.append(int(a[agent]))
    return np.stack(obs), np.array(acts)


@pytest.mark.parametrize("name", ["ppo", "a2c", "dqn", "maskable_ppo"])
def test_sb3_zip_drives_npcs_like_predict(models, name: str) -> None:
    path, model = models[name]
    envs = run_as_npc(str(path))
    obs, acts = recorded(envs)
    assert len(acts) == 2 * 30 * 3
    expected, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(acts, expected)


def test_recurrent_ppo_keeps_state_per_agent_and_resets_it(models) -> None:
    path, model = models["recurrent_ppo"]
    envs = run_as_npc(f"file://{path}", steps=40)  # 25-step episodes: crosses a reset
    for env in envs:
        assert sum(env.first_log) == 2
        state = None
        for o, a, first in zip(env.obs_log, env.action_log, env.first_log, strict=True):
            batch = np.stack([o[agent] for agent in ADVERSARIES])
            expected, state = model.predict(
                batch, state=state, episode_start=np.full(3, first), deterministic=True
            )
            np.testing.assert_array_equal([int(a[agent]) for agent in ADVERSARIES], expected)


def test_sb3_zip_loads_without_unpickling_and_logs_format(models, caplog, monkeypatch) -> None:
    # The safe path never calls cloudpickle/pickle.loads on the data file.
    from stable_baselines3.common import save_util

    def refuse(*args, **kwargs):
        raise AssertionError("unpickled the SB3 data file")

    monkeypatch.setattr(save_util, "json_to_data", refuse)
    monkeypatch.setattr("cloudpickle.loads", refuse)
    path, _ = models["ppo"]
    with caplog.at_level(logging.INFO, logger="npc_wrapper"):
        policy = load_npc(str(path), TAG_OBS, TAG_ACT, device="cpu")
    assert isinstance(policy, SB3Policy) and policy.name == "ppo"
    assert "detected as Stable-Baselines3 model" in caplog.text
    assert "selected ['ppo']" in caplog.text
    assert not any(p.requires_grad for p in policy.policy.parameters())
    assert not policy.policy.training


@pytest.mark.parametrize(
    ("algo", "continuous", "kwargs"),
    [
        (SAC, True, {}),
        (TD3, True, {}),
        (PPO, True, {"use_sde": True}),
        (QRDQN, False, {}),
        (TRPO, False, {}),
        (ARS, False, {}),
    ],
    ids=["sac", "td3", "ppo_gsde", "qrdqn", "trpo", "ars"],
)
def test_other_sb3_algorithms_load(tmp_path: Path, algo, continuous: bool, kwargs: dict) -> None:
    venv = nw.make_vec_env(lambda: simple_tag(continuous), num_envs=1, training_agents_pct=0.75, seed=0)
    model = algo("LinearPolicy" if algo is ARS else "MlpPolicy", venv, seed=0, **kwargs)
    model.save(tmp_path / "model.zip")
    venv.close()
    policy = load_npc(
        tmp_path / "model.zip", model.observation_space, model.action_space, device="cpu", deterministic=True
    )
    obs = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    policy.reset(4, seed=0)
    np.testing.assert_allclose(
        policy.act(obs, np.arange(4), np.ones(4, bool)),
        model.predict(obs, deterministic=True)[0],
        rtol=1e-5,
        atol=1e-6,
    )


def test_image_model_trained_through_the_wrapper_acts_as_npc(tmp_path: Path) -> None:
    def image_env():
        return ScriptedParallelEnv(obs_shape=(36, 36, 3), obs_dtype=np.uint8, max_steps=6)

    venv = nw.make_vec_env(image_env, num_envs=2, training_agents=["a_0", "a_1"], seed=0)
    model = PPO("CnnPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0)
    model.learn(64)
    venv.close()
    assert model.observation_space.shape == (3, 36, 36)  # SB3 trained on transposed images
    model.save(tmp_path / "cnn.zip")

    envs: list[ObsRecordingEnv] = []

    def make():
        envs.append(ObsRecordingEnv(image_env()))
        return envs[-1]

    venv = nw.make_vec_env(
        make,
        num_envs=2,
        npc=str(tmp_path / "cnn.zip"),
        training_agents=["a_0", "a_1"],
        seed=1,
        deterministic_npc=True,
    )
    venv.reset()
    for _ in range(8):
        venv.step(np.zeros(4, dtype=np.int64))
    venv.close()
    obs, acts = recorded(envs, ["b_0"])
    assert obs.shape[1:] == (36, 36, 3)
    np.testing.assert_array_equal(acts, model.predict(obs, deterministic=True)[0])


def test_checkpoint_for_other_spaces_fails_at_construction_with_both_spaces(models) -> None:
    path, _ = models["ppo"]  # trained on the adversaries (16 obs); agent_0 (the prey) sees 14
    with pytest.raises(CheckpointError) as err:
        nw.make_vec_env(simple_tag, num_envs=1, npc=str(path), training_agents_pct=0.75)
    msg = str(err.value)
    assert str(path) in msg
    assert "Box(-inf, inf, (16,), float32)" in msg and "Box(-inf, inf, (14,), float32)" in msg
    assert "Discrete(5)" in msg


def test_state_dict_mismatch_fails_at_construction_with_the_spaces(tmp_path: Path) -> None:
    torch.save(MLPAgent(16, 5).state_dict(), tmp_path / "adv.pt")
    cfg = nw.CheckpointConfig(
        uri=str(tmp_path / "adv.pt"),
        policy_class="tests.checkpoint_agents:MLPAgent",
        policy_kwargs={"obs_dim": 16, "n_actions": 5},
    )
    with pytest.raises(ValueError) as err:  # the prey's 14-dim observations do not fit a 16-input network
        nw.make_vec_env(simple_tag, num_envs=1, npc=cfg, training_agents_pct=0.75)
    assert "Box(-inf, inf, (14,), float32)" in str(err.value) and "Discrete(5)" in str(err.value)


# ----------------------------------------------------------------------------------- torch formats
def _envs() -> SimpleNamespace:
    """What CleanRL agents read from ``envs``."""
    return SimpleNamespace(single_observation_space=TAG_OBS, single_action_space=TAG_ACT)


def test_cleanrl_state_dict_with_policy_class(tmp_path: Path) -> None:
    torch.manual_seed(0)
    agent = CleanRLAgent(_envs())
    torch.save(agent.state_dict(), tmp_path / "cleanrl_agent.pt")
    cfg = nw.CheckpointConfig(
        uri=f"file://{tmp_path / 'cleanrl_agent.pt'}", policy_class="tests.checkpoint_agents:CleanRLAgent"
    )
    envs = run_as_npc(cfg)
    obs, acts = recorded(envs)
    with torch.no_grad():
        expected = agent.actor(torch.as_tensor(obs)).argmax(-1).numpy()
    np.testing.assert_array_equal(acts, expected)


def test_agent_without_forward_or_actor_head_acts_through_get_action_and_value(tmp_path: Path) -> None:
    torch.save(AtariStyleAgent(_envs()).state_dict(), tmp_path / "atari.pt")
    cfg = nw.CheckpointConfig(
        uri=str(tmp_path / "atari.pt"), policy_class="tests.checkpoint_agents:AtariStyleAgent"
    )
    policy = load_npc(cfg, TAG_OBS, TAG_ACT, device="cpu")
    policy.reset(64, seed=0)
    actions = policy.act(np.zeros((64, 16), np.float32), np.arange(64), np.ones(64, bool))
    assert actions.shape == (64,) and set(actions.tolist()) <= set(range(5))
    torch.save(NoForward().state_dict(), tmp_path / "noforward.pt")
    cfg = nw.CheckpointConfig(
        uri=str(tmp_path / "noforward.pt"), policy_class="tests.checkpoint_agents:NoForward"
    )
    with pytest.raises(CheckpointError, match="NoForward from .* has no forward"):
        load_npc(cfg, TAG_OBS, TAG_ACT)


def test_torchscript_module(tmp_path: Path) -> None:
    torch.manual_seed(1)
    agent = MLPAgent(16, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(agent), tmp_path / "scripted.pt")
    assert detect_format(tmp_path / "scripted.pt") == "torchscript"
    envs = run_as_npc(str(tmp_path / "scripted.pt"), trusted=True)
    obs, acts = recorded(envs)
    with torch.no_grad():
        np.testing.assert_array_equal(acts, agent(torch.as_tensor(obs)).argmax(-1).numpy())


def test_state_dict_under_a_key_with_kwargs(tmp_path: Path) -> None:
    agent = MLPAgent(16, 5, hidden=8)
    torch.save({"model_state_dict": agent.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    assert detect_format(tmp_path / "ckpt.pth") == "torch"
    policy = load_npc(
        nw.CheckpointConfig(
            uri=str(tmp_path / "ckpt.pth"),
            policy_class="tests.checkpoint_agents:MLPAgent",
            policy_kwargs={"obs_dim": 16, "n_actions": 5, "hidden": 8},
        ),
        TAG_OBS,
        TAG_ACT,
        device="cpu",
        deterministic=True,
    )
    assert isinstance(policy, TorchPolicy) and policy.name == "ckpt"
    obs = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    with torch.no_grad():
        expected = agent(torch.as_tensor(obs)).argmax(-1).numpy()
    np.testing.assert_array_equal(policy.act(obs, np.arange(5), np.ones(5, bool)), expected)


def test_state_dict_needs_policy_class(tmp_path: Path) -> None:
    torch.save(MLPAgent(16, 5).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="policy_class='pkg.module:Class'") as err:
        load_npc(str(tmp_path / "sd.pt"), TAG_OBS, TAG_ACT)
    assert str(tmp_path / "sd.pt") in str(err.value)


def mlp_state_dict(path: Path, saved: MLPAgent, n_actions: int) -> nw.CheckpointConfig:
    """``saved``'s state_dict at ``path``, named for loading into an ``MLPAgent(16, n_actions)``."""
    torch.save(saved.state_dict(), path)
    return nw.CheckpointConfig(
        uri=str(path),
        policy_class="tests.checkpoint_agents:MLPAgent",
        policy_kwargs={"obs_dim": 16, "n_actions": n_actions},
    )


def test_state_dict_that_does_not_fit_the_class(tmp_path: Path) -> None:
    cfg = mlp_state_dict(tmp_path / "sd.pt", MLPAgent(16, 5, hidden=8), n_actions=5)
    with pytest.raises(CheckpointError, match="does not fit tests.checkpoint_agents:MLPAgent") as err:
        load_npc(cfg, TAG_OBS, TAG_ACT)
    assert "size mismatch" in str(err.value) and str(tmp_path / "sd.pt") in str(err.value)


# ------------------------------------------------------------------------------------ trust
def test_pickled_module_needs_trusted(tmp_path: Path) -> None:
    torch.manual_seed(2)
    agent = MLPAgent(16, 5)
    torch.save(agent, tmp_path / "full.pt")
    with pytest.raises(TrustRequiredError) as err:
        load_npc(str(tmp_path / "full.pt"), TAG_OBS, TAG_ACT)
    msg = str(err.value)
    assert "trusted=True" in msg and "trusted: true" in msg and "tests.checkpoint_agents.MLPAgent" in msg
    assert str(tmp_path / "full.pt") in msg
    policy = load_npc(
        str(tmp_path / "full.pt"), TAG_OBS, TAG_ACT, trusted=True, deterministic=True, device="cpu"
    )
    obs = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_array_equal(
            policy.act(obs, np.arange(3), np.ones(3, bool)), agent(torch.as_tensor(obs)).argmax(-1).numpy()
        )


def test_sb3_zip_with_custom_class_needs_trusted(tmp_path: Path) -> None:
    venv = nw.make_vec_env(simple_tag, num_envs=1, training_agents_pct=0.75, seed=0)
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=16,
        batch_size=16,
        n_epochs=1,
        seed=0,
        policy_kwargs={"features_extractor_class": TinyExtractor},
    )
    model.learn(48)
    model.save(tmp_path / "custom.zip")
    venv.close()
    with pytest.raises(TrustRequiredError) as err:
        load_npc(str(tmp_path / "custom.zip"), TAG_OBS, TAG_ACT)
    msg = str(err.value)
    assert "tests.checkpoint_agents.TinyExtractor" in msg and "trusted=True" in msg and "trusted: true" in msg
    envs = run_as_npc(nw.CheckpointConfig(uri=str(tmp_path / "custom.zip"), trusted=True), steps=10)
    obs, acts = recorded(envs)
    np.testing.assert_array_equal(acts, model.predict(obs, deterministic=True)[0])


def test_torchscript_needs_trusted_on_every_path(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    ts = save_marker_torchscript(ckpts / "b_2.pt", marker)
    torch.save(MLPAgent(16, 5).state_dict(), ckpts / "a_1.pt")
    sd_cfg = {
        "policy_class": "tests.checkpoint_agents:MLPAgent",
        "policy_kwargs": {"obs_dim": 16, "n_actions": 5},
    }
    attempts = {
        "load_npc": lambda: load_npc(f"file://{ts}", TAG_OBS, TAG_ACT),
        "make_vec_env": lambda: run_as_npc(str(ts), steps=1),
        "directory": lambda: load_npc(nw.CheckpointConfig(uri=str(ckpts), type="latest"), TAG_OBS, TAG_ACT),
        "pool": lambda: run_as_npc(nw.CheckpointConfig(uri=str(ckpts), type="all", **sd_cfg), steps=1),
    }
    for how, attempt in attempts.items():
        with pytest.raises(TrustRequiredError) as err:
            attempt()
        msg = str(err.value)
        assert str(ts) in msg and "TorchScript is code" in msg, how
        assert "trusted=True" in msg and "trusted: true" in msg, how
        assert not marker.exists(), how
    # The payload is real: with trusted=True the module runs (in the dry run) and writes the file.
    load_npc(str(ts), TAG_OBS, TAG_ACT, trusted=True, device="cpu")
    assert marker.exists()


class RunsOnUnpickle:
    """A pickle payload: ``os.system`` is module ``posix``, which torch blocks outright."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_pickle_referring_to_a_blocked_module_is_not_called_corrupt(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    torch.save(
        {"state_dict": MLPAgent(16, 5).state_dict(), "meta": RunsOnUnpickle(marker)}, tmp_path / "sd.pt"
    )
    with pytest.raises(TrustRequiredError) as err:
        load_npc(str(tmp_path / "sd.pt"), TAG_OBS, TAG_ACT)
    msg = str(err.value)
    assert "holds pickled code" in msg and "posix.system" in msg and "module posix" in msg
    assert "corrupt" not in msg and "trusted=True" in msg and not marker.exists()

    # An SB3 zip whose policy.pth holds it: SB3's own (trusted) loader reads weights with weights_only=True.
    buf = io.BytesIO()
    torch.save({"x": RunsOnUnpickle(marker)}, buf)
    with zipfile.ZipFile(SHIPPED) as src, zipfile.ZipFile(tmp_path / "evil.zip", "w") as dst:
        for name in src.namelist():
            dst.writestr(name, buf.getvalue() if name == "policy.pth" else src.read(name))
    with pytest.raises(TrustRequiredError, match="refers to posix.system from module posix"):
        load_npc(str(tmp_path / "evil.zip"), TAG_OBS, TAG_ACT)
    with pytest.raises(CheckpointError, match="torch refuses module posix even for trusted models") as err:
        load_npc(str(tmp_path / "evil.zip"), TAG_OBS, TAG_ACT, trusted=True)
    assert "corrupt" not in str(err.value) and not marker.exists()


def test_sb3_weights_are_compared_with_the_architecture_before_it_is_built(tmp_path: Path) -> None:
    # policy_kwargs asking for ~10^12 parameters: building it for real would try to allocate terabytes.
    with zipfile.ZipFile(SHIPPED) as src:
        data = json.loads(src.read("data"))
        data["policy_kwargs"] = {
            ":type:": "<class 'dict'>",
            ":serialized:": base64.b64encode(pickle.dumps({"net_arch": [1_000_000, 1_000_000]})).decode(),
        }
        with zipfile.ZipFile(tmp_path / "huge.zip", "w") as dst:
            for name in src.namelist():
                dst.writestr(name, json.dumps(data) if name == "data" else src.read(name))
    # Built for real, the policy's ~4 TB allocation would fail and be reported as "cannot rebuild".
    with pytest.raises(CheckpointError, match=r"policy.pth\) do not fit the ActorCriticPolicy") as err:
        load_npc(str(tmp_path / "huge.zip"), TAG_OBS, TAG_ACT)
    assert "1000000" in str(err.value) and "in the file" in str(err.value)


def test_load_npc_dry_runs_torch_checkpoints_against_the_spaces(tmp_path: Path) -> None:
    cfg = mlp_state_dict(tmp_path / "one_logit.pt", MLPAgent(16, 1), n_actions=1)
    with pytest.raises(CheckpointError, match="does not fit the NPC agents") as err:
        load_npc(cfg, TAG_OBS, TAG_ACT)
    msg = str(err.value)
    assert "shape (2, 1) and dtype torch.float32" in msg and "float logits (B, 5)" in msg
    assert str(tmp_path / "one_logit.pt") in msg


# -------------------------------------------------------------------------------- file URIs
@pytest.mark.parametrize(
    "form", ["file://{path}", "file://localhost{path}", "file:{path}", "{path}"], ids=str
)
def test_file_uri_forms(tmp_path: Path, form: str) -> None:
    shutil.copy(SHIPPED, tmp_path / "n p c.zip")
    path = str(tmp_path / "n p c.zip")
    uri = form.format(path=path if form == "{path}" else quote(path))
    assert load_npc(uri, TAG_OBS, TAG_ACT, device="cpu").name == "n p c"


@pytest.mark.parametrize("uri", ["file://", "file://localhost"])
def test_file_uri_without_a_path_is_an_error(tmp_path: Path, uri: str, monkeypatch) -> None:
    shutil.copy(SHIPPED, tmp_path / "npc.zip")
    monkeypatch.chdir(tmp_path)  # a checkpoint in the current directory must not be picked up
    with pytest.raises(CheckpointError, match="names no file; give file:///abs/path"):
        load_npc(uri, TAG_OBS, TAG_ACT)


# ------------------------------------------------------------------------- damaged and missing
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found") as err:
        load_npc(f"file://{tmp_path}/nope.zip", TAG_OBS, TAG_ACT)
    assert f"{tmp_path}/nope.zip" in str(err.value)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\)"):
        load_npc(str(tmp_path / "empty.pt"), TAG_OBS, TAG_ACT)


def _truncate(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def test_truncated_sb3_zip(models, tmp_path: Path) -> None:
    bad = _truncate(models["ppo"][0], tmp_path / "ppo_cut.zip")
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        load_npc(str(bad), TAG_OBS, TAG_ACT)
    assert str(bad) in str(err.value)


def test_sb3_zip_with_damaged_weights(models, tmp_path: Path) -> None:
    src = models["ppo"][0]
    bad = tmp_path / "ppo_bitrot.zip"
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = z.getinfo("policy.pth")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 40, start + 60):  # flip bytes inside the stored tensor data
        data[i] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        load_npc(str(bad), TAG_OBS, TAG_ACT)
    assert str(bad) in str(err.value)


def test_truncated_state_dict_and_torchscript(tmp_path: Path) -> None:
    torch.save(MLPAgent(16, 5).state_dict(), tmp_path / "sd.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(MLPAgent(16, 5)), tmp_path / "ts.pt")
    torch.save(MLPAgent(16, 5).state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("sd.pt", "ts.pt", "legacy.pt"):
        bad = _truncate(tmp_path / name, tmp_path / f"cut_{name}")
        cfg = nw.CheckpointConfig(
            uri=str(bad),
            policy_class="tests.checkpoint_agents:MLPAgent",
            policy_kwargs={"obs_dim": 16, "n_actions": 5},
        )
        with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
            load_npc(cfg, TAG_OBS, TAG_ACT)
        assert str(bad) in str(err.value)


def test_garbage_file(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a checkpoint format") as err:
        load_npc(str(tmp_path / "model.pt"), TAG_OBS, TAG_ACT)
    assert str(tmp_path / "model.pt") in str(err.value)


def test_zip_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "notes.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="zip archive but not a checkpoint format"):
        load_npc(str(tmp_path / "notes.zip"), TAG_OBS, TAG_ACT)


def test_unknown_scheme() -> None:
    with pytest.raises(CheckpointError, match="unsupported URI scheme 's3'"):
        load_npc("s3://bucket/model.zip", TAG_OBS, TAG_ACT)


# --------------------------------------------------------------------------------- scripted
def test_scripted_uris() -> None:
    obs = np.zeros((4, 16), np.float32)
    rows, start = np.arange(4), np.ones(4, bool)
    noop = load_npc(nw.CheckpointConfig(uri="noop", noop_action=3), TAG_OBS, TAG_ACT)
    np.testing.assert_array_equal(noop.act(obs, rows, start), [3, 3, 3, 3])
    assert load_npc("random", TAG_OBS, TAG_ACT).name == "random"
    bot = load_npc("tests.checkpoint_agents:always_one", TAG_OBS, TAG_ACT)
    assert bot.name == "always_one"
    np.testing.assert_array_equal(bot.act(obs, rows, start), [1, 1, 1, 1])
    counting = load_npc("tests.checkpoint_agents:CountingPolicy", TAG_OBS, TAG_ACT)
    assert type(counting).__name__ == "CountingPolicy" and counting.action_space == TAG_ACT


def test_scripted_callable_drives_npcs_through_the_env() -> None:
    envs = run_as_npc("tests.checkpoint_agents:always_one", steps=5)
    _, acts = recorded(envs)
    assert (acts == 1).all()


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("tests.no_such_module:bot", "cannot import module 'tests.no_such_module'"),
        ("tests.checkpoint_agents:no_such_bot", "has no attribute 'no_such_bot'"),
        ("tests.checkpoint_agents:MLPAgent", "torch module class"),
    ],
)
def test_scripted_import_errors(uri: str, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        load_npc(uri, TAG_OBS, TAG_ACT)


def test_selector_on_scripted_npc_is_an_error() -> None:
    with pytest.raises(CheckpointError, match="Set type: specific"):
        load_npc(nw.CheckpointConfig(uri="random", type="latest"), TAG_OBS, TAG_ACT)
