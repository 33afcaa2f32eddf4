"""``npc-plot``: the learning curve of one or more runs (win rate and returns vs steps) as a PNG.

Reads the SB3 progress CSVs a run writes (``runs/<run>/logs/progress*.csv``, one per session when
a run was resumed)::

    npc-plot runs/my_run                         # writes runs/my_run/learning_curve.png
    npc-plot runs/a runs/b -o compare.png        # several runs on the same axes
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from npc_wrapper.cli.errors import CLIError, die

__all__ = ["main", "read_progress", "plot_runs"]

PROG = "npc-plot"
STEP = "time/total_timesteps"


def _float(x: str | None) -> float:
    try:
        return float(x) if x not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_progress(run_dir: str | Path) -> dict[str, list[float]]:
    """All logged columns of a run, by step, merged over its sessions (later sessions win on overlap)."""
    run_dir = Path(run_dir)
    files = sorted((run_dir / "logs").glob("progress*.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise CLIError(f"{run_dir} has no logs/progress*.csv: is it an npc-train run directory?")
    rows: dict[float, dict[str, float]] = {}
    for f in files:
        with open(f, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                step = _float(row.get(STEP))
                if math.isnan(step):
                    continue
                values = {k: _float(v) for k, v in row.items() if k}
                merged = rows.setdefault(step, {})
                merged.update({k: v for k, v in values.items() if not math.isnan(v)})
    steps = sorted(rows)
    keys = sorted({k for r in rows.values() for k in r})
    return {k: [rows[s].get(k, math.nan) for s in steps] for k in keys} | {STEP: steps}


def _series(data: dict[str, list[float]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(s, v) for s, v in zip(data[STEP], data.get(key, [])) if not math.isnan(v)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Draw win rate (training window and evaluations with their 95% CI) and team returns vs steps.

    :param run_dirs: npc-train run directories
    :param out: the PNG to write
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_win, ax_ret) = plt.subplots(1, 2, figsize=(12, 4.5))
    drew_win = False
    for i, run in enumerate(run_dirs):
        data = read_progress(run)
        name = Path(run).name
        color = f"C{i}"
        x, y = _series(data, "npc/win_rate")
        if x:
            ax_win.plot(x, y, color=color, label=f"{name} (training, last 100 episodes)")
            drew_win = True
        x, y = _series(data, "eval/win_rate")
        if x:
            _, lo = _series(data, "eval/win_rate_ci_low")
            _, hi = _series(data, "eval/win_rate_ci_high")
            err = (
                [[v - a for v, a in zip(y, lo)], [b - v for v, b in zip(y, hi)]]
                if len(lo) == len(y) == len(hi)
                else None
            )
            ax_win.errorbar(
                x, y, yerr=err, fmt="o", color=color, capsize=4, label=f"{name} (evaluation, 95% CI)"
            )
            drew_win = True
        x, y = _series(data, "npc/train_team_return")
        if x:
            ax_ret.plot(x, y, color=color, label=f"{name}: training team")
        x, y = _series(data, "npc/npc_team_return")
        if x:
            ax_ret.plot(x, y, color=color, linestyle="--", label=f"{name}: NPC team")
        x, y = _series(data, "eval/train_return")
        if x:
            ax_ret.plot(x, y, "o", color=color, label=f"{name}: training team (evaluation)")
    ax_win.set(
        title="Win rate vs the NPC", xlabel="training-agent steps", ylabel="win rate", ylim=(-0.02, 1.02)
    )
    if not drew_win:
        ax_win.text(0.5, 0.5, "no NPC in these runs", ha="center", va="center", transform=ax_win.transAxes)
    ax_ret.set(title="Episode return (summed over each team)", xlabel="training-agent steps", ylabel="return")
    for ax in (ax_win, ax_ret):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _check_suffix(out: str | Path) -> None:
    """An output name matplotlib cannot write fails here in one line, before any plotting."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(out).suffix.lstrip(".").lower()
    if suffix not in formats:
        raise CLIError(
            f"-o {out}: unsupported file type {suffix or '(none)'!r}; end the name with one of "
            f"{', '.join('.' + f for f in sorted(formats))}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``npc-plot``."""
    p = argparse.ArgumentParser(
        prog=PROG, description="Plot win rate and returns vs steps of npc-train runs to a PNG."
    )
    p.add_argument("runs", nargs="+", help="run directories (runs/<run>)")
    p.add_argument(
        "-o",
        "--out",
        help="output PNG (default: <run>/learning_curve.png for one run, else learning_curve.png)",
    )
    args = p.parse_args(argv)
    out = args.out or (
        Path(args.runs[0]) / "learning_curve.png" if len(args.runs) == 1 else Path("learning_curve.png")
    )
    try:
        _check_suffix(out)
        path = plot_runs(args.runs, out)
    except CLIError as e:
        die(PROG, e)
    except ImportError as e:
        die(PROG, f"plotting needs matplotlib: pip install 'npc-wrapper[train]' ({e})")
    print(path)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
