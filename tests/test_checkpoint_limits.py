"""The limits of loading untrusted checkpoints (issue #14), beyond the hostile files' reproducers.

What a legitimate checkpoint needs still loads (large networks, shared references, every limit
raised by ``max_checkpoint_bytes``), the limits add up across a file, and the unpickler refuses what
it cannot bound: deep tuples, huge arrays, endless pickles, cycles. Files are real SB3 models
(``tests.hostile.sb3_model_zip``) tampered with as in ``tests/test_hostile_checkpoints.py``.
"""

from __future__ import annotations

import copyreg
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import torch
from gymnasium import spaces

import npc_wrapper as nw
from npc_wrapper.checkpoints import CheckpointError, CheckpointLimitError, TrustRequiredError
from npc_wrapper.checkpoints.bounded import MAX_DEPTH, MAX_PICKLE_OPS
from npc_wrapper.checkpoints.store import latest_checkpoint, remove_stale_temporaries
from tests import hostile
from tests.checkpoint_agents import MLPAgent
from tests.hostile import ACT, OBS, one_line_naming

MiB = 1 << 20


@pytest.fixture(scope="module")
def good_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile.sb3_model_zip(tmp_path_factory.mktemp("limits") / "good.zip")


def load(spec: Any, **kwargs: Any) -> Any:
    return nw.load_npc(spec, OBS, ACT, device="cpu", **kwargs)


def limit_refusal(spec: Any, *names: str, **kwargs: Any) -> str:
    """The one-line ``CheckpointLimitError`` loading ``spec`` raises, naming each of ``names``."""
    with pytest.raises(CheckpointLimitError) as exc:
        load(spec, **kwargs)
    one_line_naming(str(exc.value), *names)
    assert hostile.states_a_limit(str(exc.value)), str(exc.value)
    return str(exc.value)


def with_kwargs_pickle(src: Path, dst: Path, pickled: bytes) -> Path:
    return hostile.with_data_entries(src, dst, policy_kwargs=hostile.raw_serialized(pickled))


# ------------------------------------------------------------------------------- raising a limit
def test_max_checkpoint_bytes_raises_every_byte_limit(good_zip: Path, tmp_path: Path) -> None:
    """``data`` padded to 20 MiB passes the default 16 MiB for these small spaces: refused, naming the way
    to raise it; loaded with ``max_checkpoint_bytes`` (argument or config) or as trusted."""
    path = hostile.padded_data_zip(good_zip, tmp_path / "padded.zip", pad=20 * MiB)
    message = limit_refusal(str(path), str(path), "max_checkpoint_bytes", "16.0 MiB")
    assert "default limit" in message
    assert isinstance(load(str(path), max_checkpoint_bytes=64 * MiB), nw.SB3Policy)
    assert isinstance(load(nw.CheckpointConfig(uri=str(path), max_checkpoint_bytes=64 * MiB)), nw.SB3Policy)
    assert isinstance(load(str(path), trusted=True), nw.SB3Policy)


def test_max_checkpoint_bytes_can_also_lower_the_limits(good_zip: Path) -> None:
    message = limit_refusal(str(good_zip), str(good_zip), "'data'", max_checkpoint_bytes=1000)
    assert "(max_checkpoint_bytes)" in message


@pytest.mark.parametrize("value", [0, -1, 1.5, "1000", True])
def test_max_checkpoint_bytes_must_be_a_positive_byte_count(good_zip: Path, value: Any) -> None:
    with pytest.raises(ValueError, match="max_checkpoint_bytes must be a positive number of bytes"):
        load(str(good_zip), max_checkpoint_bytes=value)
    with pytest.raises(ValueError, match="checkpoint_npc.max_checkpoint_bytes must be a positive"):
        nw.CheckpointConfig(uri=str(good_zip), max_checkpoint_bytes=value).validate()


def test_a_torch_checkpoint_past_max_checkpoint_bytes_is_refused(tmp_path: Path) -> None:
    torch.save(MLPAgent(3, 4).state_dict(), tmp_path / "sd.pt")
    cfg = nw.CheckpointConfig(
        uri=str(tmp_path / "sd.pt"), policy_class="tests.checkpoint_agents:MLPAgent",
        policy_kwargs={"obs_dim": 3, "n_actions": 4},
    )
    assert isinstance(load(cfg), nw.TorchPolicy)
    limit_refusal(cfg, str(tmp_path / "sd.pt"), max_checkpoint_bytes=100)


# -------------------------------------------------------------------- what legitimately loads
def test_a_network_larger_than_the_floor_loads_under_the_default_limits(tmp_path: Path) -> None:
    """net_arch [512, 512]: 2 MiB of weights, past the 1 MiB floor; the policy.pth limit grows with the
    network the data describes."""
    path = hostile.sb3_model_zip(tmp_path / "wide.zip", net_arch=(512, 512))
    with zipfile.ZipFile(path) as z:
        assert z.getinfo("policy.pth").file_size > 1.5 * MiB
    policy = load(str(path))
    assert sum(p.numel() for p in policy.policy.parameters()) > 512 * 512


def test_shared_references_in_policy_kwargs_stay_shared(good_zip: Path, tmp_path: Path) -> None:
    """One list object as both networks' architecture: cloudpickle writes it once and refers to it
    again; it decodes to one object, and the model loads."""
    layers = [8]
    path = hostile.with_data_entries(
        good_zip, tmp_path / "shared.zip",
        policy_kwargs=hostile.sb3_serialized({"net_arch": {"pi": layers, "vf": layers}}),
    )
    policy = load(str(path))
    assert isinstance(policy, nw.SB3Policy)


# ------------------------------------------------------------------------ what the pickles declare
def test_declared_spaces_count_against_one_total(good_zip: Path, tmp_path: Path) -> None:
    """Ten Boxes of (100, 100) float64: each declares 0.17 MiB, under the 1 MiB these agents allow;
    together 1.7 MiB, over it."""
    space = hostile.many_boxes(count=10, shape=(100, 100))
    path = hostile.with_data_entries(good_zip, tmp_path / "ten.zip", observation_space=hostile.sb3_serialized(space))
    assert "in all" in limit_refusal(str(path), str(path), "observation_space")
    # One of them fits, and is compared with the agents' spaces as before.
    one = hostile.with_data_entries(
        good_zip, tmp_path / "one.zip", observation_space=hostile.sb3_serialized(hostile.huge_box((100, 100)))
    )
    with pytest.raises(CheckpointError, match="does not fit the NPC agents"):
        load(str(one))


@pytest.mark.parametrize(
    "payload",
    [
        hostile.Reduced(np.ndarray, ((1 << 15, 1 << 15),)),  # 8 GiB of float64, uninitialised
        hostile.Reduced(spaces.MultiBinary, ((1 << 15, 1 << 15),)),
    ],
    ids=["ndarray", "multi_binary"],
)
def test_arrays_declared_by_shape_are_charged_before_they_exist(
    good_zip: Path, tmp_path: Path, payload: Any
) -> None:
    path = with_kwargs_pickle(good_zip, tmp_path / "array.zip", cloudpickle.dumps({"x": payload}))
    limit_refusal(str(path), str(path), "policy_kwargs")


def test_reconstructor_of_a_base_other_than_object_needs_trust(good_zip: Path, tmp_path: Path) -> None:
    """``copyreg._reconstructor(ndarray, ndarray, shape)`` would call ``ndarray.__new__`` with a shape from
    the file: only the plain-object form (``object.__new__``) is rebuilt."""
    payload = hostile.Reduced(copyreg._reconstructor, (np.ndarray, np.ndarray, (1 << 30,)))
    path = with_kwargs_pickle(good_zip, tmp_path / "recon.zip", cloudpickle.dumps({"x": payload}))
    with pytest.raises(TrustRequiredError, match="copyreg._reconstructor with base"):
        load(str(path))


# ------------------------------------------------------------------------------ pickle machinery
def test_deep_tuples_are_refused_as_they_are_made(good_zip: Path, tmp_path: Path) -> None:
    """``((((0,),),),)`` 200,000 deep as a dict key: hashing it would overflow the C stack (the process
    would die); the tuple is refused as it is made."""
    deep = b"\x80\x02}K\x00" + b"\x85" * 200_000 + b"K\x01s."  # {(((0,),)...): 1}
    path = with_kwargs_pickle(good_zip, tmp_path / "tuples.zip", deep)
    assert f"{MAX_DEPTH} deep" in limit_refusal(str(path), str(path), "policy_kwargs")


def test_a_pickle_of_too_many_operations_is_refused(good_zip: Path, tmp_path: Path) -> None:
    """None pushed and popped 600,000 times: no object survives, but the pickle machine would run for
    as long as the file is."""
    endless = b"\x80\x02}" + b"N0" * (MAX_PICKLE_OPS // 2 + 100_000) + b"."
    path = with_kwargs_pickle(good_zip, tmp_path / "ops.zip", endless)
    assert str(MAX_PICKLE_OPS) in limit_refusal(str(path), str(path), "policy_kwargs")


def test_a_value_that_contains_itself_is_malformed(good_zip: Path, tmp_path: Path) -> None:
    cycle: list[Any] = [8]
    cycle.append(cycle)
    path = with_kwargs_pickle(good_zip, tmp_path / "cycle.zip", cloudpickle.dumps({"net_arch": cycle}))
    with pytest.raises(CheckpointError, match="contains itself") as exc:
        load(str(path))
    assert not isinstance(exc.value, TrustRequiredError)
    one_line_naming(str(exc.value), str(path))


def test_the_state_of_a_named_class_cannot_be_set(good_zip: Path, tmp_path: Path) -> None:
    """BUILD on a global (the Box class itself) would change the class for the whole process."""
    pickled = (b"\x80\x02}X\x01\x00\x00\x00x" + b"cgymnasium.spaces.box\nBox\n" + b"}X\x01\x00\x00\x00yK\x01sb" + b"s.")
    path = with_kwargs_pickle(good_zip, tmp_path / "build.zip", pickled)
    with pytest.raises(TrustRequiredError, match="setting the state of"):
        load(str(path))
    assert not hasattr(spaces.Box, "y")


# ----------------------------------------------------------------------------- run directories
def test_only_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    """A save in progress in another live process keeps its temporary file; a dead writer's goes, as
    do this process's own (nothing is being saved when a run starts)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".step_96.{sleeper.pid}.tmp.zip"
        own = tmp_path / f".final.json.{os.getpid()}.tmp"
        dead = tmp_path / ".step_192.4194305.tmp.zip"
        kept = [tmp_path / "step_96.zip", tmp_path / ".hidden.zip", live]
        for p in [*kept, own, dead]:
            p.write_bytes(b"x")
        assert sorted(remove_stale_temporaries(tmp_path)) == sorted([own, dead])
        assert sorted(tmp_path.iterdir()) == sorted(kept)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_checkpoint_too_large_to_check_is_still_the_latest(good_zip: Path, tmp_path: Path) -> None:
    """Resume checks a run's own checkpoints within the default limits; one past them (a 300 MiB data,
    as declared) is not damaged, so it is chosen, while a damaged one is skipped."""
    hostile.padded_data_zip(good_zip, tmp_path / "step_200.zip", pad=300 * MiB)
    hostile.empty_zip(tmp_path / "step_300.zip")
    assert latest_checkpoint(tmp_path) == (200, tmp_path / "step_200.zip")
