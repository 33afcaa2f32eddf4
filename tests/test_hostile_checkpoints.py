"""Hostile and malformed checkpoints (issue #14, findings 1, 3, 6 and 8, and what probing found beyond them).

Each test builds its file in ``tmp_path`` from a real SB3 model (``tests.hostile``) and loads it
through the public ``npc_wrapper.load_npc``. A test whose finding is about time or memory loads it
in a fresh process bounded from outside (``hostile.run_bounded``), so a regression fails within
seconds instead of hanging the suite or exhausting the machine.

Each test reproduced a finding that failed on the code of its time (they were strict xfails
until fixed); now each guards its fix.

Assumptions the implementer may adapt (names only, never the strength of an assertion):

* every refusal is a ``CheckpointError`` (``npc_wrapper.checkpoints``), one line of at most 2000
  characters, naming the file; where the issue asks for a limit (the decompressed-size cap, the
  pickle's depth) the refusal also states it, recognised by one of ``hostile.LIMIT_WORDS`` and a
  number (extend the word list if the wording differs). Where either a limit or a comparison
  with the NPC agents' spaces may refuse (declared shapes), only the file is required;
* time bounds: "refused within 2 s" is measured from just before ``load_npc`` is called; memory
  bounds: at most 500 MiB of resident memory above the process's before the call.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import wandb
import wandb.errors

import npc_wrapper as nw
from npc_wrapper.checkpoints import CheckpointError, TrustRequiredError
from tests import hostile
from tests.envs import ScriptedParallelEnv
from tests.hostile import ACT, OBS, one_line_naming

#: The secret a file outside the checkpoint directory holds; no error may print any of it.
SECRET = b"XK7QZ-not-for-your-eyes-0001"

#: Loads ``sys.argv[1]`` (a URI, or a CheckpointConfig's fields as JSON) in a bounded child.
LOAD = """
import json, sys
import npc_wrapper as nw
from tests import hostile as h
spec = sys.argv[1]
if spec.startswith("{"):
    spec = nw.CheckpointConfig(**json.loads(spec))
ready()
result({"error": error_of(nw.load_npc, spec, h.OBS, h.ACT, device="cpu")})
"""


@pytest.fixture(scope="module", autouse=True)
def _warm_zygote() -> None:
    """The bounded runs' forking process warms up while the module's first fixtures build."""
    hostile.start_zygote()


@pytest.fixture(scope="module")
def good_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real SB3 PPO model for ScriptedParallelEnv's NPC, saved with ``model.save``."""
    return hostile.sb3_model_zip(tmp_path_factory.mktemp("hostile") / "good.zip")


def load(spec: Any) -> Any:
    return nw.load_npc(spec, OBS, ACT, device="cpu")


def refusal(spec: Any) -> str:
    """The message of the ``CheckpointError`` loading ``spec`` raises."""
    with pytest.raises(CheckpointError) as exc:
        load(spec)
    return str(exc.value)


def load_bounded(spec: str, *, seconds: float, memory_mb: float = 500) -> dict[str, Any] | None:
    """The error loading ``spec`` raises in a bounded child (``None`` if it loads); fails the test if the
    child was killed for time or memory."""
    run = hostile.run_bounded(LOAD, seconds=seconds, memory_mb=memory_mb, argv=[spec])
    assert run.killed is None, (
        f"loading {spec[:200]} was killed for {run.killed} after {run.seconds:.1f} s at "
        f"+{run.peak_mb:.0f} MiB (bounds: {seconds} s, {memory_mb} MiB)"
    )
    assert run.result is not None, run.errors[-3000:]
    return run.result["error"]


def assert_refusal(error: dict[str, Any] | None, path: Path, limit: bool = False) -> None:
    """A one-line ``CheckpointError`` naming ``path`` (and, with ``limit``, stating the limit it hit)."""
    assert error is not None, f"{path} loaded"
    assert "CheckpointError" in error["mro"], error
    one_line_naming(error["message"], str(path))
    if limit:
        assert hostile.states_a_limit(error["message"]), error["message"]


# ------------------------------------------------------------------------------- 1. pickle bombs
def test_shared_reference_pickle_in_policy_kwargs_is_refused_within_2s(
    good_zip: Path, tmp_path: Path
) -> None:
    """264 bytes of pickle (``a = [a, a]`` 24 times) as SB3 stores a pickled policy_kwargs; today the
    loader's post-pass copies 2**24 leaves (41 s, 3.5 GB)."""
    bomb = {"net_arch": hostile.shared_reference_bomb(24)}
    kwargs = hostile.sb3_serialized(bomb)
    path = hostile.with_data_entries(good_zip, tmp_path / "bomb.zip", policy_kwargs=kwargs)
    assert path.stat().st_size < 50_000
    assert_refusal(load_bounded(str(path), seconds=2.0), path)


def test_deeply_nested_pickle_is_refused_as_malformed_not_as_needing_trust(
    good_zip: Path, tmp_path: Path
) -> None:
    """A 100,000-deep list in policy_kwargs is malformed data, not code: ``trusted=True`` is no fix for it
    (today: TrustRequiredError "cannot be decoded safely (RecursionError ...)", advising trust)."""
    path = hostile.with_data_entries(
        good_zip, tmp_path / "deep_pickle.zip", policy_kwargs=hostile.raw_serialized(hostile.deep_pickle())
    )
    with pytest.raises(CheckpointError) as exc:
        load(str(path))
    assert not isinstance(exc.value, TrustRequiredError), str(exc.value)[:500]
    assert_refusal({"mro": ["CheckpointError"], "message": str(exc.value)}, path, limit=True)


def test_no_pickled_code_runs_without_trust(good_zip: Path, tmp_path: Path) -> None:
    """What already holds: a pickled call of ``os.system`` in policy_kwargs is refused, never made."""
    marker = tmp_path / "PWNED"
    payload = hostile.Reduced(os.system, (f"touch {marker}",))
    kwargs = hostile.sb3_serialized(payload)
    path = hostile.with_data_entries(good_zip, tmp_path / "code.zip", policy_kwargs=kwargs)
    with pytest.raises(TrustRequiredError, match="posix.system|os.system"):
        load(str(path))
    assert not marker.exists()


# ------------------------------------------------------------------------- 3. small files, big memory
def test_huge_declared_observation_space_is_refused_without_allocating_it(
    good_zip: Path, tmp_path: Path
) -> None:
    """``Box(0, 1, (11000, 11000), float64)`` pickled in ~100 bytes: building it allocates 2 x 968 MB."""
    path = hostile.with_data_entries(
        good_zip, tmp_path / "box.zip", observation_space=hostile.sb3_serialized(hostile.huge_box())
    )
    assert_refusal(load_bounded(str(path), seconds=10.0), path)


def test_many_moderate_boxes_are_refused_without_allocating_them(good_zip: Path, tmp_path: Path) -> None:
    """A ``Tuple`` of 200 Boxes of (1000, 1000), each built on its own (3.2 GB in all, a 10 kB file): a
    limit per declared space does not bound the total."""
    path = hostile.with_data_entries(
        good_zip, tmp_path / "boxes.zip", observation_space=hostile.sb3_serialized(hostile.many_boxes())
    )
    assert path.stat().st_size < 100_000
    assert_refusal(load_bounded(str(path), seconds=10.0), path)


def test_data_padded_to_1gb_is_refused_within_memory_bounds(good_zip: Path, tmp_path: Path) -> None:
    """``data`` is the model's JSON and 1 GiB of whitespace (valid JSON), 1 MB compressed: today 3.3 GB."""
    path = hostile.padded_data_zip(good_zip, tmp_path / "padded.zip")
    assert path.stat().st_size < 2_000_000
    assert_refusal(load_bounded(str(path), seconds=10.0), path, limit=True)


def test_1gb_tensor_in_policy_pth_is_refused_within_memory_bounds(good_zip: Path, tmp_path: Path) -> None:
    """policy.pth holds one 1 GiB zero tensor (torch's archive, deflated to 1 MB): today 4.3 GB."""
    path = hostile.tensor_bomb_zip(good_zip, tmp_path / "tensor.zip")
    assert path.stat().st_size < 2_000_000
    assert_refusal(load_bounded(str(path), seconds=10.0), path)


def test_thousands_of_layers_are_refused_quickly_in_one_short_line(good_zip: Path, tmp_path: Path) -> None:
    """``policy_kwargs: {"net_arch": [1] * 20000}`` as plain JSON (so no unpickler limit applies), 8 kB:
    the meta-device skeleton costs ~1 ms a layer (a million layers: 17 minutes), and the refusal then
    prints the whole list (60 kB of "1, 1, ...")."""
    kwargs = {"net_arch": [1] * 20000}
    path = hostile.with_data_entries(good_zip, tmp_path / "layers.zip", policy_kwargs=kwargs)
    assert path.stat().st_size < 20_000
    assert_refusal(load_bounded(str(path), seconds=2.0), path)


def test_choosing_in_a_directory_does_not_read_a_padded_data_in_full(good_zip: Path, tmp_path: Path) -> None:
    """``type: latest`` over a directory reads each zip's ``data`` for its step count, the 1 GiB-padded one
    too, though the sidecars already order them: the good, newer checkpoint should load (or the padded
    one be refused) without the 3 GB."""
    root = tmp_path / "ckpts"
    root.mkdir()
    shutil.copy(good_zip, root / "new.zip")
    (root / "new.json").write_text('{"step": 2}')
    hostile.padded_data_zip(good_zip, root / "old.zip")
    (root / "old.json").write_text('{"step": 1}')
    error = load_bounded(f'{{"uri": "{root}", "type": "latest"}}', seconds=10.0)
    if error is not None:
        assert_refusal(error, root / "old.zip", limit=True)


ROUND_ROBIN = """
import sys
from npc_wrapper.league import round_robin
from tests.envs import ScriptedParallelEnv
ready()
result({"error": error_of(round_robin, sys.argv[1], ScriptedParallelEnv, episodes=1, num_envs=1, device="cpu",
                          print_table=False)})
"""


def test_round_robin_does_not_read_a_1gb_policy_in_full(good_zip: Path, tmp_path: Path) -> None:
    """``npc_wrapper.league.round_robin`` (``npc-eval RUN --round-robin``) tells copies of one network
    apart by hashing each zip's ``policy.pth``, read whole, before the loader sees it: the 1 MB zip
    holding a 1 GiB tensor is read into memory there. It should be refused by name (or skipped)."""
    shutil.copy(good_zip, tmp_path / "a.zip")
    hostile.tensor_bomb_zip(good_zip, tmp_path / "bomb.zip")
    run = hostile.run_bounded(ROUND_ROBIN, seconds=30.0, memory_mb=500, argv=[str(tmp_path)])
    assert run.killed is None, f"killed for {run.killed} after {run.seconds:.1f} s at +{run.peak_mb:.0f} MiB"
    error = run.result["error"]
    if error is not None:
        assert "ValueError" in error["mro"], error
        one_line_naming(error["message"], "bomb.zip")


# ------------------------------------------------------------------------ 6. raw errors, malformed data
def test_deep_json_data_is_a_checkpoint_error_naming_the_file(good_zip: Path, tmp_path: Path) -> None:
    path = hostile.replace_members(good_zip, tmp_path / "deep.zip", data=hostile.deep_json(200_000))
    one_line_naming(refusal(str(path)), str(path))


@pytest.mark.parametrize(
    "data",
    [
        b'"policy_class"',
        b"42",
        b"null",
        b'"hello"',
        b"[]",
    ],
)
def test_data_that_is_not_an_object_is_a_checkpoint_error_naming_the_file(
    good_zip: Path, tmp_path: Path, data: bytes
) -> None:
    """A bare string, number, null or list as ``data`` (a string holding "policy_class" passes the
    ``in`` test today, then fails indexing with "string indices must be integers")."""
    path = hostile.replace_members(good_zip, tmp_path / "bare.zip", data=data)
    one_line_naming(refusal(str(path)), str(path))


def test_uninitialised_box_is_a_checkpoint_error_naming_the_file(good_zip: Path, tmp_path: Path) -> None:
    """``copyreg._reconstructor(Box, object, None)``: a Box whose ``__init__`` never ran."""
    space = hostile.sb3_serialized(hostile.uninitialised_box())
    path = hostile.with_data_entries(good_zip, tmp_path / "uninit.zip", observation_space=space)
    one_line_naming(refusal(str(path)), str(path))


def test_deep_sidecar_json_is_a_checkpoint_error_naming_the_sidecar(good_zip: Path, tmp_path: Path) -> None:
    shutil.copy(good_zip, tmp_path / "model.zip")
    (tmp_path / "model.json").write_bytes(hostile.deep_json(100_000))
    one_line_naming(refusal(str(tmp_path / "model.zip")), str(tmp_path / "model.json"))


def test_choosing_in_a_directory_with_a_deep_json_data(good_zip: Path, tmp_path: Path) -> None:
    """Listing reads each zip's ``data`` (for its step count) outside the loader's error handling: the
    good, newer checkpoint should load, or the bad one be refused by name."""
    shutil.copy(good_zip, tmp_path / "new.zip")
    (tmp_path / "new.json").write_text('{"step": 2}')
    hostile.replace_members(good_zip, tmp_path / "old.zip", data=hostile.deep_json(200_000))
    (tmp_path / "old.json").write_text('{"step": 1}')
    try:
        load(nw.CheckpointConfig(uri=str(tmp_path), type="latest"))
    except CheckpointError as e:
        one_line_naming(str(e), str(tmp_path / "old.zip"))


@pytest.mark.parametrize("uri", ["x" * 100_000, "file:///" + "x" * 100_000], ids=["path", "file-uri"])
def test_100k_character_uri_is_one_short_line_naming_the_uri(uri: str) -> None:
    one_line_naming(refusal(uri), "uri", longest=1000)


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_path_that_is_no_regular_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    """``/dev/zero`` or a named pipe as the checkpoint: refused by name within 2 s (reading a FIFO with
    no writer would block forever, reading /dev/zero never ends)."""
    if kind == "fifo":
        path = tmp_path / "model.zip"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    error = load_bounded(str(path), seconds=2.0)
    assert error is not None and "CheckpointError" in error["mro"], error
    one_line_naming(error["message"], str(path))


def test_deep_wandb_cache_index_is_ignored_like_any_unreadable_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreadable ``index.json`` is ignored with a warning and rebuilt; a 100k-deep one crashes instead.
    Offline, the load then fails as it does with no cache: a CheckpointError naming the URI."""
    (tmp_path / "index.json").write_bytes(hostile.deep_json(100_000))

    def no_login(*args: Any, **kwargs: Any) -> Any:  # the W&B API offline, as without credentials
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "Api", no_login)
    uri = "wandb://e/p/model/npc:v1"
    with caplog.at_level(logging.WARNING), pytest.raises(CheckpointError) as exc:
        load(nw.CheckpointConfig(uri=uri, cache_dir=str(tmp_path)))
    one_line_naming(str(exc.value), uri)
    assert "index.json" in caplog.text


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_pool_weights_that_overflow_are_refused_naming_weights(good_zip: Path, tmp_path: Path) -> None:
    """``weights: [1e308, 1e308]`` pass validation (each finite) but sum to inf: numpy's "Probabilities do
    not sum to 1" at the first reset, naming nothing."""
    for name in ("a.zip", "b.zip"):
        shutil.copy(good_zip, tmp_path / name)
    npc = nw.CheckpointConfig(uri=str(tmp_path), type="all", weights=[1e308, 1e308])
    with pytest.raises(ValueError, match="weights"):
        venv = nw.make_vec_env(ScriptedParallelEnv, npc=npc, device="cpu", seed=0)
        try:
            venv.reset()
        finally:
            venv.close()


# ----------------------------------------------------------------------------------- 8. symlinks
def symlinked_dir(good_zip: Path, root: Path, link_name: str, target: Path) -> Path:
    """``root/ckpts`` holding ``a.zip`` and a symlink ``link_name`` to ``target`` (outside it)."""
    ckpts = root / "ckpts"
    ckpts.mkdir()
    shutil.copy(good_zip, ckpts / "a.zip")
    os.symlink(os.path.relpath(target, ckpts), ckpts / link_name)
    return ckpts


def test_symlink_out_of_a_checkpoint_directory_is_refused(good_zip: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(good_zip, outside / "other.zip")
    ckpts = symlinked_dir(good_zip, tmp_path, "b.zip", outside / "other.zip")
    one_line_naming(refusal(nw.CheckpointConfig(uri=str(ckpts), type="all")), "b.zip")


def test_symlink_to_a_secret_is_refused_without_printing_it(good_zip: Path, tmp_path: Path) -> None:
    secret = tmp_path / "target.txt"
    secret.write_bytes(SECRET)
    ckpts = symlinked_dir(good_zip, tmp_path, "leak.zip", secret)
    message = refusal(nw.CheckpointConfig(uri=str(ckpts), type="all"))
    one_line_naming(message, "leak.zip")
    assert SECRET[:4].decode() not in message


def test_no_error_prints_a_files_contents(tmp_path: Path) -> None:
    path = tmp_path / "notes.bin"
    path.write_bytes(SECRET)
    message = refusal(str(path))
    one_line_naming(message, str(path))
    assert SECRET[:4].decode() not in message and SECRET[:4].hex() not in message


def test_symlink_within_a_checkpoint_directory_still_loads(good_zip: Path, tmp_path: Path) -> None:
    """What must keep working: a link to a checkpoint inside the same directory."""
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    shutil.copy(good_zip, ckpts / "a.zip")
    os.symlink("a.zip", ckpts / "best.zip")
    pool = load(nw.CheckpointConfig(uri=str(ckpts), type="all"))
    assert sorted(m.name for m in pool.members) == ["a", "best"]


class _SymlinkArtifact:
    """A W&B artifact (the only stand-in these tests use) whose download holds a symlink out of it."""

    name, version, type, aliases, digest = "npc:v0", "v0", "model", ["latest"], "0123abcd"

    def __init__(self, target: Path) -> None:
        self.target = target
        self.metadata: dict[str, Any] = {}

    def download(self, root: str | None = None, **kwargs: Any) -> str:
        os.symlink(self.target, Path(str(root)) / "model.zip")
        return str(root)


class _SymlinkApi:
    def __init__(self, artifact: _SymlinkArtifact) -> None:
        self.art = artifact

    def artifact(self, name: str, type: str | None = None) -> _SymlinkArtifact:
        return self.art


def test_symlink_out_of_a_wandb_download_is_refused(
    good_zip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(good_zip, outside / "other.zip")
    api = _SymlinkApi(_SymlinkArtifact(outside / "other.zip"))
    monkeypatch.setattr(wandb, "Api", lambda *a, **k: api)
    npc = nw.CheckpointConfig(uri="wandb://e/p/model/npc:v0", cache_dir=str(tmp_path / "cache"))
    one_line_naming(refusal(npc), "model.zip")
