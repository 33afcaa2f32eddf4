"""Smoke tests of ``scripts/benchmark.py`` with tiny settings: every row and section is produced.

No timing is asserted: the figures of a few steps on a shared machine mean nothing. The real
numbers live in BENCHMARKS.md.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark.py"
TINY = ["--steps", "20", "--repeats", "1", "--warmup", "2", "--num-envs", "2", "--breakdown-steps", "20"]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark script imported as a module (``scripts/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("npc_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    # main() sets torch's intra-op threads; give the rest of the suite its own setting back.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _table_rows(text: str) -> list[list[str]]:
    """Cells of the first Markdown table in ``text`` (header first, separator dropped)."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("| "):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif line.startswith("|---"):
            continue
        elif rows:
            break
    return rows


def test_table_has_every_row(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = bench.main(TINY)
    out = capsys.readouterr().out

    rows = _table_rows(out)
    header, body = rows[0], rows[1:]
    assert header[:3] == ["env", "NPC policy", "variant"]
    assert "ratio to floor [min-max]" in header and "agent steps/s" in header
    seen = {(r[0], r[1], r[2].split(" (")[0]) for r in body}
    expected = {(e, p, v) for e in ("tag", "battle") for p in ("mlp", "cnn") for v in bench.VARIANTS}
    assert seen == expected
    for r in body:  # every figure is a positive number
        rate = float(r[header.index("vec steps/s")].replace(",", ""))
        assert rate > 0
        assert re.fullmatch(r"\d+\.\d\d \[\d+\.\d\d-\d+\.\d\d\]", r[header.index("ratio to floor [min-max]")])
    floor_rows = [r for r in body if r[2].startswith("floor")]
    assert all(r[header.index("ratio to floor [min-max]")].startswith("1.00") for r in floor_rows)
    # the floor's forward batch is every NPC of every env: 1 prey x 2 envs, 12 blue x 2 envs
    assert {r[2].split("batch ")[1].rstrip(")") for r in floor_rows} == {"2", "24"}

    assert [(b.env, b.policy) for b in blocks] == [("tag", "mlp"), ("tag", "cnn"), ("battle", "mlp"), ("battle", "cnn")]
    for block in blocks:
        assert set(block.rows) == set(bench.VARIANTS)
        assert all(len(row.rates) == 1 and row.rates[0] > 0 for row in block.rows.values())
    for env in ("tag", "battle"):
        for policy in ("mlp", "cnn"):
            assert re.search(rf"- {env} / {policy}: npc_wrapper/floor = \d+\.\d\d, "
                             rf"npc_wrapper/dict_floor = \d+\.\d\d, npc_wrapper/per_env = \d+\.\d\d", out)
    assert re.search(r"peak RSS of this process: \d+ MiB", out)
    assert "machine:" in out and "npc_wrapper: version" in out
    assert re.search(rf"source digest {bench.source_digest()}\n", out)

    breakdown = _table_rows(out.split("## where an npc_wrapper step goes")[1])
    assert breakdown[0][:3] == ["env", "NPC policy", "step ms"]
    assert [(r[0], r[1]) for r in breakdown[1:]] == [(b.env, b.policy) for b in blocks]
    assert all(float(r[2]) > 0 and r[-1].endswith("%") for r in breakdown[1:])


def test_subset_of_variants_and_profile(bench: ModuleType, capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    bench.main(TINY + ["--envs", "battle", "--policies", "cnn", "--variants", "floor,npc_wrapper",
                       "--profile", str(tmp_path)])
    out = capsys.readouterr().out
    body = _table_rows(out)[1:]
    assert [r[2].split(" (")[0] for r in body] == ["floor", "npc_wrapper"]
    assert (tmp_path / "battle_cnn.prof").stat().st_size > 0
    assert "top self time in npc_wrapper/" in out and "joint_env.py" in out


def test_dict_floor_reads_every_step_out_of_the_dicts(bench: ModuleType) -> None:
    """The dict floor copies each step's observations and rewards; its forward reads the copied NPC rows."""
    spec = bench.ENV_SPECS["battle"]
    model = bench.build_npc("mlp", bench.spaces.Box(0, 2, (13, 13, 5), np.float32), bench.spaces.Discrete(21),
                            torch.device("cpu"), 0)
    runner = bench.DictFloorRunner(spec, model, 2, 0)
    last: dict[int, tuple] = {}
    for e, env in enumerate(runner.envs):
        def step(actions, e=e, inner=env.step):
            last[e] = inner(actions)
            return last[e]
        env.step = step
    seen: list[np.ndarray] = []
    forward = runner.forward
    runner.forward = lambda batch: (seen.append(batch.copy()), forward(batch))[1]
    try:
        runner.run(5)
        train, npcs = bench._split(runner.envs[0], spec.training_agents)
        for e, (obs, rewards, *_rest) in last.items():
            np.testing.assert_array_equal(runner.train_obs[e], np.stack([obs[a] for a in train]))
            np.testing.assert_array_equal(runner.npc_obs[e], np.stack([obs[a] for a in npcs]))
            index = runner.index
            np.testing.assert_array_equal(runner.rewards[e][[index[a] for a in rewards]],
                                          np.float32(list(rewards.values())))
        np.testing.assert_array_equal(seen[-1], runner.npc_obs.reshape(seen[-1].shape))
        obs, infos = runner._hand_out()
        assert obs.shape == (2 * len(train), 13, 13, 5) and not np.shares_memory(obs, runner.train_obs)
        assert infos == [{}] * (2 * len(train))
    finally:
        runner.close()


def test_source_digest_names_the_code(bench: ModuleType, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The digest follows every package file's name and bytes and the script's, not git metadata."""
    pkg = tmp_path / "npc_wrapper"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    script = tmp_path / "benchmark.py"
    script.write_text("z = 3\n")
    seen = [bench.source_digest(pkg, script)]
    assert re.fullmatch(r"[0-9a-f]{12}", seen[0]) and bench.source_digest(pkg, script) == seen[0]
    (pkg / "sub" / "b.py").write_text("y = 3\n")
    seen.append(bench.source_digest(pkg, script))
    (pkg / "a.py").rename(pkg / "c.py")
    seen.append(bench.source_digest(pkg, script))
    script.write_text("z = 4\n")
    seen.append(bench.source_digest(pkg, script))
    assert len(set(seen)) == 4

    assert bench.main(["--source-digest"]) == []
    assert capsys.readouterr().out == bench.source_digest() + "\n"


def test_memory_check_samples_rss(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--memory-check", "--memory-steps", "60", "--memory-every", "20", "--num-envs", "2",
                "--envs", "tag", "--policies", "mlp"])
    out = capsys.readouterr().out
    samples = _table_rows(out)[1:]
    assert [int(r[0]) for r in samples] == [20, 40, 60]
    assert all(float(r[1]) > 0 and float(r[2]) >= float(r[1]) - 1.0 for r in samples)  # peak >= current
    assert "fitted slope" in out
    assert "| tag | mlp |" not in out  # memory-check mode prints no throughput table


def test_workers_check_section(bench: ModuleType) -> None:
    args = bench.parse_args(["--workers-num-envs", "2", "--workers-steps", "3", "--warmup", "1",
                             "--workers-repeats", "1"])
    text = bench.workers_check(args)
    rows = [r for r in _table_rows(text) if r[0].isdigit()]
    assert [r[0] for r in rows] == ["0", "2"]
    assert re.search(r"num_workers=2 / num_workers=0 = \d+\.\d\d", text)
    assert re.search(r"parallel headroom: two busy processes did 2 units of work \d+\.\d\dx", text)


@pytest.mark.timeout(180)
def test_ray_check_section(bench: ModuleType) -> None:
    """The Ray section starts a local Ray itself (none is running) and stops it with its last env."""
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    args = bench.parse_args(["--ray-num-envs", "2", "--ray-workers", "1", "--ray-steps", "2", "--warmup", "1",
                             "--ray-repeats", "1"])
    text = bench.ray_check(args)
    assert not ray.is_initialized()
    assert re.search(r"Ray at [\d.]+:\d+ \(started by the backend\), the Ray workers on 1 node\n", text)
    assert [r[0] for r in _table_rows(text)[1:]] == ["process", "ray"]
    assert re.search(r"ray / process = \d+\.\d\d \[", text)
    assert "each env's buffers travel back: 30.3 KiB (30.0 KiB of observations" in text  # masks: 61 B
    assert re.search(r"Ray round trip of one step without the envs .*: \d+\.\d\d ms; copying them into the "
                     r"learner's buffers: \d+ us", text)
    assert re.search(r"simple_tag .*: process \d+\.\d\d ms/step, ray \d+\.\d\d ms/step; Ray adds -?\d+\.\d\d "
                     r"ms per step", text)


def test_inference_section_runs_on_cpu(bench: ModuleType) -> None:
    """The GPU section's code path on CPU (main() runs it only with --device cuda; graph capture needs CUDA)."""
    args = bench.parse_args(["--steps", "5", "--warmup", "2", "--num-envs", "2", "--envs", "tag"])
    text = bench.inference_section(args, torch.device("cpu"))
    rows = [r for r in _table_rows(text) if r[0] == "tag"]
    assert [r[1] for r in rows] == ["mlp", "cnn"]
    for r in rows:
        npc_ms, launch_ms, wait_ms = float(r[4]), float(r[5]), float(r[6])
        assert npc_ms > 0 and npc_ms == pytest.approx(launch_ms + wait_ms, abs=2e-3)
        assert float(r[7]) > 0 and float(r[8]) > 0 and r[11] == "n/a" and r[13] == "n/a"


def test_unknown_options_are_refused(bench: ModuleType) -> None:
    with pytest.raises(SystemExit, match="make_vec_env has no parameter"):
        bench.main(TINY + ["--engine-option", "no_such_option=True"])
    model = bench.build_npc("cnn", bench.spaces.Box(0, 1, (13, 13, 5), np.float32), bench.spaces.Discrete(21),
                            torch.device("cpu"), 0)
    with pytest.raises(SystemExit, match="TorchPolicy has no parameter"):
        model.wrapper_npc({"no_such_option": True})
    with pytest.raises(SystemExit):  # argparse refuses an env it does not know
        bench.parse_args(["--envs", "tag,nope"])
    for flag in ("--steps", "--repeats", "--workers-repeats", "--breakdown-steps"):
        with pytest.raises(SystemExit):
            bench.parse_args([flag, "0"])


def test_bare_forward_matches_wrapper_adapter_deterministically(bench: ModuleType) -> None:
    """The floor's bare logits are the network the wrapper runs: argmax agrees with the adapter's greedy action."""
    import npc_wrapper as nw

    obs_space, act_space = bench.spaces.Box(0, 2, (13, 13, 5), np.float32), bench.spaces.Discrete(21)
    obs = np.random.default_rng(0).uniform(0, 2, (32, 13, 13, 5)).astype(np.float32)
    for kind in ("mlp", "cnn"):
        model = bench.build_npc(kind, obs_space, act_space, torch.device("cpu"), 0)
        with torch.inference_mode():
            greedy = model.logits(torch.from_numpy(obs)).argmax(-1).numpy()
        adapter = nw.as_npc_policy(model.npc, obs_space, act_space, device="cpu", deterministic=True)
        adapter.reset(32, seed=0)
        np.testing.assert_array_equal(adapter.act(obs, np.arange(32), np.zeros(32, bool)), greedy)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_refuses_to_run_without_cuda(tmp_path: Path) -> None:
    """The GPU check must fail where CUDA is missing, not pass with every GPU test skipped."""
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SCRIPT.parent / "gpu_check.sh"), str(out)], capture_output=True,
                            text=True, check=False, cwd=SCRIPT.parent.parent,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 1
    assert "CUDA is not available" in result.stderr
    assert not (out / "gpu_tests.log").exists()
