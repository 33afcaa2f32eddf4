"""DualPolicyConfig / CheckpointConfig: validation messages, dicts, OmegaConf and Hydra."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import npc_wrapper as nw
from npc_wrapper.config import CheckpointConfig, DualPolicyConfig
from tests.envs import RecordingParallelEnv, ScriptedParallelEnv

ORIGINAL_YAML = """
trainer:
  dual_policy:
    enabled: true
    training_agents_pct: 0.5
    checkpoint_npc:
      uri: "wandb://metta-research/dual_policy_training/model/bullm_dual_policy_against_roomba_v9:v2"
      type: "specific"
      range: 1
      metric: "epoch"
"""


def test_defaults_are_valid_and_disabled() -> None:
    cfg = DualPolicyConfig()
    cfg.validate()
    assert not cfg.enabled and cfg.training_agents_pct == 0.5
    assert cfg.checkpoint_npc == CheckpointConfig()
    assert cfg.checkpoint_npc.type == "specific" and cfg.checkpoint_npc.range == 1
    assert cfg.checkpoint_npc.metric == "epoch" and not cfg.checkpoint_npc.trusted


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"enabled": True}, r"dual_policy.checkpoint_npc.uri is required when dual_policy.enabled is true"),
        ({"training_agents_pct": 1.5}, r"dual_policy.training_agents_pct must be a fraction in \[0, 1\]"),
        ({"training_agents_pct": -0.1}, r"training_agents_pct must be a fraction"),
        ({"training_agents_pct": True}, r"training_agents_pct must be a fraction"),
        ({"training_agents": []}, r"training_agents must be a non-empty list"),
        ({"enabled": "yes"}, r"enabled must be true or false"),
        ({"training_agents_pct": 0}, r"dual_policy.training_agents_pct is 0, so no agent would train"),
    ],
)
def test_dual_policy_validation_messages(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DualPolicyConfig(**kwargs).validate()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"type": "best"},
            r"checkpoint_npc.type must be one of specific, latest, top, rand, all; got 'best'",
        ),
        ({"type": "top", "range": 0}, r"checkpoint_npc.range must be an integer >= 1"),
        ({"type": "top", "range": 1.5}, r"range must be an integer"),
        (
            {"range": 3},
            r"type 'specific' selects exactly the checkpoint .* use type 'latest', 'top' or 'rand'",
        ),
        ({"metric": ""}, r"metric must be a metadata key"),
        (
            {"type": "top", "range": 3, "weights": [1, 2]},
            r"weights has 2 entries but type 'top' with range=3",
        ),
        ({"type": "all", "weights": [1, -1]}, r"weights must be non-negative"),
        ({"type": "all", "weights": ["a"]}, r"weights must be a list of numbers"),
        ({"policy_class": "MyAgent"}, r"policy_class must look like 'pkg.module:Class'"),
        ({"policy_kwargs": [1]}, r"policy_kwargs must be a mapping"),
        ({"trusted": "yes"}, r"checkpoint_npc.trusted must be true or false"),
        ({"uri": ""}, r"checkpoint_npc.uri must be a non-empty string"),
        ({"seed": "x"}, r"seed must be an integer or null"),
        (
            {"type": "latest", "metric": "score"},
            r"checkpoint_npc.metric='score' is only used by type 'top'.*set type: top, or drop metric",
        ),
        ({"metric": "score"}, r"metric='score' is only used by type 'top'.*but type is 'specific'"),
    ],
)
def test_checkpoint_validation_messages(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CheckpointConfig(**kwargs).validate()


def test_metric_is_the_default_or_used() -> None:
    # The original dual-policy feature's example spells out metric: epoch (the default) with type specific.
    CheckpointConfig(type="specific", metric="epoch").validate()
    CheckpointConfig(type="top", metric="score").validate()
    assert CheckpointConfig(type="top").metric == "epoch"


def test_zero_training_agents_pct_is_fine_when_agents_are_named() -> None:
    DualPolicyConfig(training_agents_pct=0, training_agents=["a_0"]).validate()


def test_nested_validation_names_the_full_path() -> None:
    with pytest.raises(ValueError, match=r"dual_policy.checkpoint_npc.type must be one of"):
        DualPolicyConfig(checkpoint_npc=CheckpointConfig(type="newest")).validate()


def test_from_dict_plain() -> None:
    cfg = DualPolicyConfig.from_dict(
        {
            "enabled": True,
            "training_agents_pct": 0.25,
            "checkpoint_npc": {
                "uri": "file:///tmp/ckpts",
                "type": "top",
                "range": 3,
                "metric": "score",
                "weights": [3, 2, 1],
            },
        }
    )
    assert cfg.enabled and cfg.training_agents_pct == 0.25
    npc = cfg.checkpoint_npc
    assert (npc.uri, npc.type, npc.range, npc.metric, npc.weights) == (
        "file:///tmp/ckpts",
        "top",
        3,
        "score",
        [3, 2, 1],
    )


def test_from_dict_unknown_keys() -> None:
    with pytest.raises(ValueError) as err:
        DualPolicyConfig.from_dict({"enabled": False, "training_pct": 0.5})
    msg = str(err.value)
    assert (
        "'training_pct'" in msg
        and "known keys: enabled, training_agents_pct, training_agents, checkpoint_npc" in msg
    )
    with pytest.raises(ValueError) as err:
        DualPolicyConfig.from_dict({"checkpoint_npc": {"uri": "random", "ranges": 2}})
    msg = str(err.value)
    assert "'ranges' in dual_policy.checkpoint_npc" in msg and "range" in msg and "metric" in msg


def test_from_dict_validates() -> None:
    with pytest.raises(ValueError, match="training_agents_pct must be a fraction"):
        DualPolicyConfig.from_dict({"training_agents_pct": 2})
    with pytest.raises(ValueError, match="must be a mapping"):
        DualPolicyConfig.from_dict(["enabled"])


def test_from_omegaconf_dictconfig_of_the_original_yaml() -> None:
    conf = OmegaConf.create(ORIGINAL_YAML)
    cfg = DualPolicyConfig.from_dict(conf.trainer.dual_policy)
    assert cfg.enabled and cfg.training_agents_pct == 0.5
    assert cfg.checkpoint_npc.uri.endswith("bullm_dual_policy_against_roomba_v9:v2")
    assert isinstance(cfg.checkpoint_npc, CheckpointConfig) and cfg.checkpoint_npc.type == "specific"


def test_structured_config_and_overrides() -> None:
    schema = OmegaConf.structured(DualPolicyConfig)
    merged = OmegaConf.merge(
        schema,
        OmegaConf.from_dotlist(
            [
                "enabled=true",
                "checkpoint_npc.uri=file:///ckpts",
                "checkpoint_npc.type=rand",
                "checkpoint_npc.range=2",
            ]
        ),
    )
    cfg = DualPolicyConfig.from_dict(merged)
    assert (
        cfg.checkpoint_npc.type == "rand"
        and cfg.checkpoint_npc.range == 2
        and cfg.checkpoint_npc.weights is None
    )


def test_hydra_compose(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    (tmp_path / "train.yaml").write_text(ORIGINAL_YAML)
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        conf = compose(
            "train",
            overrides=[
                "trainer.dual_policy.checkpoint_npc.type=top",
                "trainer.dual_policy.checkpoint_npc.range=2",
                "trainer.dual_policy.checkpoint_npc.uri=file:///ckpts",
            ],
        )
    cfg = DualPolicyConfig.from_dict(conf.trainer.dual_policy)
    assert (cfg.checkpoint_npc.type, cfg.checkpoint_npc.range) == ("top", 2)


def test_env_kwargs_enabled_drives_npcs() -> None:
    cfg = DualPolicyConfig(
        enabled=True,
        training_agents_pct=0.67,
        checkpoint_npc=CheckpointConfig(uri="noop", noop_action=2, deterministic=True),
    )
    envs: list[RecordingParallelEnv] = []

    def make():
        envs.append(RecordingParallelEnv(ScriptedParallelEnv()))
        return envs[-1]

    venv = nw.make_vec_env(make, num_envs=2, seed=0, **cfg.env_kwargs())
    assert venv.training_agents == ["a_0", "a_1"] and venv.npc_agents == ["b_0"]
    venv.reset()
    for _ in range(3):
        venv.step(np.zeros(4, dtype=np.int64))
    venv.close()
    assert [int(a["b_0"]) for env in envs for a in env.action_log] == [2] * 6


def test_env_kwargs_disabled_trains_every_agent() -> None:
    kwargs = DualPolicyConfig().env_kwargs()
    assert kwargs == {"training_agents_pct": 1.0, "training_agents": None}
    venv = nw.make_vec_env(lambda: ScriptedParallelEnv(), num_envs=2, seed=0, **kwargs)
    assert venv.training_agents == ["a_0", "a_1", "b_0"] and venv.npc_agents == []
    venv.close()
