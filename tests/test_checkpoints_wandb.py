"""``wandb://`` checkpoints with a stand-in for ``wandb.Api`` (the only piece replaced).

The stand-in's artifacts carry real checkpoint files and real metadata, and ``download(root)``
copies the files; resolution, caching by digest, the index, selection and loading run for real.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import wandb
import wandb.errors
from stable_baselines3 import PPO

import npc_wrapper as nw
from npc_wrapper.checkpoints import load_npc, select_checkpoints
from npc_wrapper.checkpoints.wandb import WandbSource, default_cache_dir, parse_wandb_uri
from npc_wrapper.errors import CheckpointError, WandbError, WandbNotFoundError, WandbUnavailableError
from npc_wrapper.npcs.pool import NPCPool
from tests.checkpoint_agents import fixed_action_agent
from tests.envs import ScriptedParallelEnv

OBS = ScriptedParallelEnv().observation_space("a_0")
ACT = ScriptedParallelEnv().action_space("a_0")
CLASS = "tests.checkpoint_agents:MLPAgent"
KWARGS = {"obs_dim": 3, "n_actions": 4}


class StandInArtifact:
    """Mimics the attributes and ``download`` of ``wandb.Artifact`` over real local files."""

    def __init__(
        self,
        api: StandInApi,
        collection: str,
        version: int,
        type_: str,
        files: list[Path],
        metadata: dict[str, Any],
        aliases: list[str],
    ) -> None:
        self._api = api
        self._files = files
        base = collection.rsplit("/", 1)[1]
        self.name = f"{base}:v{version}"
        self.version = f"v{version}"
        self.type = type_
        self.metadata = metadata
        self.aliases = aliases
        h = hashlib.md5()
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
        self.digest = h.hexdigest()

    def download(self, root: str | None = None, **kwargs: Any) -> str:
        self._api.downloads.append(self.name)
        if self._api.fail_download:
            shutil.copy(
                self._files[0], Path(root) / self._files[0].name
            )  # a partial download, then the failure
            raise wandb.errors.CommError("connection reset during download")
        for f in self._files:
            shutil.copy(f, Path(root) / f.name)
        return str(root)


class StandInApi:
    """Answers ``artifact`` and ``artifacts`` like ``wandb.Api`` for the collections it holds."""

    def __init__(self) -> None:
        self.collections: dict[str, list[StandInArtifact]] = {}
        self.downloads: list[str] = []
        self.calls: list[str] = []
        self.fail_download = False

    def add(
        self, collection: str, type_: str, files: list[Path], metadata: dict[str, Any]
    ) -> StandInArtifact:
        versions = self.collections.setdefault(collection, [])
        for old in versions:
            old.aliases = [a for a in old.aliases if a != "latest"]
        art = StandInArtifact(self, collection, len(versions), type_, files, metadata, ["latest"])
        versions.append(art)
        return art

    def artifact(self, name: str, type: str | None = None) -> StandInArtifact:
        self.calls.append(f"artifact {name}")
        collection, _, version = name.rpartition(":")
        entity_project = collection.rsplit("/", 1)[0]
        for art in self.collections.get(collection, []):
            if version == art.version or version in art.aliases:
                if type is not None and art.type != type:
                    # wandb wraps the ValueError of a type mismatch in a CommError
                    raise wandb.errors.CommError(
                        f"type {type!r} specified but this artifact is of type {art.type!r}"
                    )
                return art
        raise wandb.errors.CommError(
            f"artifact membership {name.rsplit('/', 1)[1]!r} not found in {entity_project!r}"
        )

    def artifacts(self, type_name: str, name: str, per_page: int = 50) -> list[StandInArtifact]:
        self.calls.append(f"artifacts {type_name} {name}")
        return [a for a in self.collections.get(name, []) if a.type == type_name]


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandInApi:
    """``e/p/npc`` with versions v0..v2 (fixed-action state_dicts, metadata epoch and score)."""
    stand_in = StandInApi()
    files = tmp_path / "uploads"
    files.mkdir()
    for k, score in enumerate([0.2, 0.9, 0.5]):
        path = files / f"v{k}" / "agent.pt"
        path.parent.mkdir()
        torch.save(fixed_action_agent(3, 4, k).state_dict(), path)
        stand_in.add("e/p/npc", "model", [path], {"epoch": 10 * (k + 1), "score": score})
    monkeypatch.setattr(wandb, "Api", lambda *a, **k: stand_in)
    return stand_in


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch):
    """Make ``wandb.Api()`` fail as it does without credentials."""

    def no_login(*args: Any, **kwargs: Any) -> Any:
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    def go() -> None:
        monkeypatch.setattr(wandb, "Api", no_login)

    return go


def cfg(uri: str, cache: Path, **kw: Any) -> nw.CheckpointConfig:
    return nw.CheckpointConfig(uri=uri, policy_class=CLASS, policy_kwargs=KWARGS, cache_dir=str(cache), **kw)


def action_of(policy) -> int:
    policy.reset(1, seed=0)
    return int(policy.act(np.zeros((1, 3), np.float32), np.arange(1), np.ones(1, bool))[0])


def test_parse_wandb_uri() -> None:
    u = parse_wandb_uri("wandb://ent/proj/model/name:v2")
    assert (u.entity, u.project, u.type, u.name, u.version) == ("ent", "proj", "model", "name", "v2")
    assert u.pinned and u.qualified == "ent/proj/name:v2" and str(u) == "wandb://ent/proj/model/name:v2"
    u = parse_wandb_uri("wandb://ent/proj/name")
    assert u.type is None and u.version is None and u.qualified == "ent/proj/name:latest"
    assert parse_wandb_uri("wandb://ent/proj/name:best").version == "best"
    for bad in ("wandb://ent/name", "wandb://a/b/c/d/e", "wandb://ent/proj/name:", "wandb://ent//name"):
        with pytest.raises(WandbError, match="cannot parse"):
            parse_wandb_uri(bad)


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "npc_wrapper" / "wandb"


def test_specific_version_downloads_once_then_loads_from_cache_without_the_api(
    api: StandInApi, tmp_path: Path, offline, caplog
) -> None:
    cache = tmp_path / "cache"
    uri = "wandb://e/p/model/npc:v1"
    with caplog.at_level(logging.INFO, logger="npc_wrapper"):
        policy = load_npc(cfg(uri, cache), OBS, ACT, deterministic=True)
    assert policy.name == "npc:v1" and action_of(policy) == 1
    assert api.downloads == ["npc:v1"]
    digest = api.collections["e/p/npc"][1].digest
    assert (cache / digest / "agent.pt").is_file()
    index = json.loads((cache / "index.json").read_text())
    assert index["refs"]["e/p/npc:v1"]["digest"] == digest
    assert "detected as torch.save archive" in caplog.text

    calls = len(api.calls)
    assert action_of(load_npc(cfg(uri, cache), OBS, ACT, deterministic=True)) == 1
    assert api.downloads == ["npc:v1"] and len(api.calls) == calls  # pinned and cached: W&B not contacted

    offline()
    assert action_of(load_npc(cfg(uri, cache), OBS, ACT, deterministic=True)) == 1


def test_alias_is_resolved_online_and_from_the_index_offline(
    api: StandInApi, tmp_path: Path, offline, caplog
) -> None:
    cache = tmp_path / "cache"
    uri = "wandb://e/p/model/npc:latest"
    assert load_npc(cfg(uri, cache), OBS, ACT).name == "npc:v2"
    assert load_npc(cfg(uri, cache), OBS, ACT).name == "npc:v2"
    assert api.downloads == ["npc:v2"]  # the alias is resolved again, the files are not downloaded again
    offline()
    with caplog.at_level(logging.WARNING, logger="npc_wrapper"):
        policy = load_npc(cfg("wandb://e/p/model/npc", cache), OBS, ACT, deterministic=True)
    assert policy.name == "npc:v2" and action_of(policy) == 2
    assert "using the cached resolution of wandb://e/p/model/npc" in caplog.text


def test_uri_without_type(api: StandInApi, tmp_path: Path) -> None:
    policy = load_npc(cfg("wandb://e/p/npc:v0", tmp_path / "cache"), OBS, ACT, deterministic=True)
    assert policy.name == "npc:v0" and action_of(policy) == 0


def test_selectors_list_versions_and_download_only_the_selected(api: StandInApi, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    top = cfg("wandb://e/p/model/npc", cache, type="top", range=2, metric="score")
    assert [c.name for c in select_checkpoints(top)] == ["npc:v1", "npc:v2"]
    assert api.downloads == []  # selecting does not download
    pool = load_npc(top, OBS, ACT, deterministic=True)
    assert isinstance(pool, NPCPool) and [m.name for m in pool.members] == ["npc:v1", "npc:v2"]
    assert [action_of(m) for m in pool.members] == [1, 2]
    assert sorted(api.downloads) == ["npc:v1", "npc:v2"]
    assert [c.name for c in select_checkpoints(cfg("wandb://e/p/npc", cache, type="latest"))] == ["npc:v2"]
    assert len(select_checkpoints(cfg("wandb://e/p/npc", cache, type="all"))) == 3
    rand = cfg("wandb://e/p/npc", cache, type="rand", range=2, seed=3)
    assert [c.name for c in select_checkpoints(rand)] == [c.name for c in select_checkpoints(rand)]


def test_selector_over_the_cached_listing_offline(api: StandInApi, tmp_path: Path, offline) -> None:
    cache = tmp_path / "cache"
    top = cfg("wandb://e/p/model/npc", cache, type="top", range=2, metric="epoch")
    load_npc(top, OBS, ACT)
    offline()
    pool = load_npc(top, OBS, ACT, deterministic=True)
    assert [m.name for m in pool.members] == ["npc:v2", "npc:v1"]
    # v0 was listed but never downloaded: selecting it offline says so.
    with pytest.raises(WandbUnavailableError, match="is not in the cache"):
        load_npc(cfg("wandb://e/p/model/npc", cache, type="all"), OBS, ACT)


def test_top_with_missing_metric_lists_the_artifact_metadata(api: StandInApi, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        select_checkpoints(cfg("wandb://e/p/model/npc", tmp_path / "cache", type="top", metric="elo"))
    assert "metadata['elo']" in str(err.value) and "['epoch', 'score']" in str(err.value)


def test_version_with_a_selector_is_an_error(api: StandInApi, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="drop ':v1' from the uri"):
        select_checkpoints(cfg("wandb://e/p/model/npc:v1", tmp_path / "cache", type="top"))


def test_auth_failure_names_the_uri_and_what_to_do(tmp_path: Path, offline) -> None:
    offline()
    uri = "wandb://e/p/model/npc:v1"
    with pytest.raises(WandbUnavailableError) as err:
        load_npc(cfg(uri, tmp_path / "cache"), OBS, ACT)
    msg = str(err.value)
    assert uri in msg and "wandb login" in msg and "WANDB_API_KEY" in msg and "file://" in msg
    assert "No API key configured" in msg


def test_real_wandb_api_without_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ``wandb.Api()`` with no key configured: the same clear error."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(WandbUnavailableError) as err:
        load_npc(cfg("wandb://e/p/model/npc:latest", tmp_path / "cache"), OBS, ACT)
    assert "wandb://e/p/model/npc:latest" in str(err.value) and "wandb login" in str(err.value)


def test_wandb_not_installed_says_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the wandb package the error says so, not that W&B rejected the credentials."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ModuleNotFoundError
    with pytest.raises(WandbUnavailableError) as err:
        load_npc(cfg("wandb://e/p/model/npc:v1", tmp_path / "cache"), OBS, ACT)
    msg = str(err.value)
    assert "wandb://e/p/model/npc:v1" in msg and "npc-wrapper[wandb]" in msg and "file://" in msg
    assert "credentials" not in msg


def test_offline_error_points_at_cached_versions(api: StandInApi, tmp_path: Path, offline) -> None:
    cache = tmp_path / "cache"
    load_npc(cfg("wandb://e/p/model/npc:v1", cache), OBS, ACT)
    offline()
    with pytest.raises(WandbUnavailableError) as err:
        load_npc(cfg("wandb://e/p/model/npc:v0", cache), OBS, ACT)
    digest = api.collections["e/p/npc"][1].digest
    assert f"npc:v1: file://{cache / digest}" in str(err.value)
    # ... and that path loads as a plain file:// URI.
    assert (
        action_of(load_npc(cfg(f"file://{cache / digest / 'agent.pt'}", cache), OBS, ACT, deterministic=True))
        == 1
    )


def test_not_found(api: StandInApi, tmp_path: Path) -> None:
    with pytest.raises(WandbNotFoundError, match="wandb://e/p/model/npc:v9"):
        load_npc(cfg("wandb://e/p/model/npc:v9", tmp_path / "cache"), OBS, ACT)
    with pytest.raises(WandbNotFoundError, match="no artifact"):
        load_npc(cfg("wandb://e/p/model/nope", tmp_path / "cache"), OBS, ACT)


def test_wrong_artifact_type_is_not_found_not_unreachable(api: StandInApi, tmp_path: Path) -> None:
    """W&B answered: the artifact has another type. That is no outage, so no cached resolution stands in."""
    cache = tmp_path / "cache"
    with pytest.raises(WandbNotFoundError, match="type 'dataset' specified but this artifact is of type"):
        load_npc(cfg("wandb://e/p/dataset/npc:v1", cache), OBS, ACT)
    load_npc(cfg("wandb://e/p/model/npc:latest", cache), OBS, ACT)  # indexes npc:latest
    with pytest.raises(WandbNotFoundError, match="Check the entity, project, artifact name, type"):
        load_npc(cfg("wandb://e/p/dataset/npc:latest", cache), OBS, ACT)


def test_interrupted_download_leaves_nothing_in_the_cache(api: StandInApi, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    api.fail_download = True
    with pytest.raises(WandbUnavailableError, match="downloading wandb://e/p/model/npc:v1 failed"):
        load_npc(cfg("wandb://e/p/model/npc:v1", cache), OBS, ACT)
    assert [p.name for p in cache.iterdir()] == ["index.json"]
    api.fail_download = False
    assert action_of(load_npc(cfg("wandb://e/p/model/npc:v1", cache), OBS, ACT, deterministic=True)) == 1


def test_artifact_with_several_checkpoints_is_an_error(api: StandInApi, tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for p in (a, b):
        torch.save(fixed_action_agent(3, 4, 0).state_dict(), p)
    api.add("e/p/two", "model", [a, b], {})
    with pytest.raises(CheckpointError, match=r"holds 2 checkpoint files \['a.pt', 'b.pt'\]"):
        load_npc(cfg("wandb://e/p/two:v0", tmp_path / "cache"), OBS, ACT)


def test_sb3_artifact_drives_npcs_in_the_env(api: StandInApi, tmp_path: Path) -> None:
    venv = nw.make_vec_env(lambda: ScriptedParallelEnv(), num_envs=1, training_agents=["a_0", "a_1"], seed=0)
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=8, n_epochs=1, seed=0)
    venv.close()
    path = tmp_path / "sb3" / "model.zip"
    path.parent.mkdir()
    model.save(path)
    api.add("e/p/bot", "model", [path], {"epoch": 1})
    spec = nw.CheckpointConfig(uri="wandb://e/p/model/bot:v0", cache_dir=str(tmp_path / "cache"))
    venv = nw.make_vec_env(
        lambda: ScriptedParallelEnv(max_steps=3), num_envs=2, npc=spec, training_agents=["a_0", "a_1"], seed=0
    )
    venv.reset()
    names = []
    for _ in range(3):
        _, _, dones, infos = venv.step(np.zeros(4, dtype=np.int64))
        names += [info[nw.EPISODE_KEY]["npc"] for info, d in zip(infos, dones, strict=True) if d]
    venv.close()
    assert names == ["bot:v0"] * 4


def test_wandb_source_accepts_an_api_object(tmp_path: Path) -> None:
    stand_in = StandInApi()
    path = tmp_path / "agent.pt"
    torch.save(fixed_action_agent(3, 4, 3).state_dict(), path)
    stand_in.add("e/p/x", "model", [path], {})
    source = WandbSource(cache_dir=tmp_path / "cache", api=stand_in)
    av = source.resolve(parse_wandb_uri("wandb://e/p/x:latest"))
    assert av.name == "x:v0" and av.metadata == {} and (source.fetch(av) / "agent.pt").is_file()


def test_unreadable_index_is_rebuilt(api: StandInApi, tmp_path: Path, caplog) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "index.json").write_text("{truncated")
    with caplog.at_level(logging.WARNING, logger="npc_wrapper"):
        assert load_npc(cfg("wandb://e/p/model/npc:v0", cache), OBS, ACT).name == "npc:v0"
    assert "unreadable wandb cache index" in caplog.text
    assert "e/p/npc:v0" in json.loads((cache / "index.json").read_text())["refs"]
