"""`vitpose-scale plot runs/X`: the training curves of a run directory as a PNG.

Loss and the learning rate of every run; AP at each evaluation of a pose run (one curve per
dataset of a multi-task run); an MAE pretraining run has no evaluation, so loss and lr only.
Only argparse is imported at the top: `--help` starts neither torch nor matplotlib.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitpose-scale plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory (train.output_dir) holding metrics.jsonl")
    parser.add_argument("--out", default=None, help="the picture to write (default: RUN_DIR/training_curves.png; "
                                                    ".svg or .pdf work too)")
    parser.add_argument("--title", default=None,
                        help="the figure's title (default: the run's name, model, ranks and steps)")
    return parser


def plot_run(run_dir, out=None, title: str | None = None) -> Path:
    """Draw ``run_dir``'s metrics.jsonl; an InputError names a missing or empty file."""
    from vitpose_scale.cli import InputError
    from vitpose_scale.visualize import plot_training_curves, run_title

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a directory; expected a run directory (train.output_dir)")
    if not metrics.is_file():
        raise InputError(f"{run_dir} has no metrics.jsonl: expected the output directory of a training or "
                         f"pretraining run")
    out = Path(out) if out else run_dir / "training_curves.png"
    try:
        return plot_training_curves(metrics, out, title=title or run_title(run_dir))
    except ValueError as exc:  # no loss or AP record yet (a run killed at start-up), or an --out suffix
        raise InputError(str(exc)) from exc  # matplotlib cannot write


def _plot(args: argparse.Namespace) -> int:
    out = plot_run(args.run_dir, args.out, args.title)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0; 2 for a directory without (usable) metrics.jsonl or an unwritable --out."""
    args = build_parser().parse_args(argv)  # before any heavy import: --help stays instant
    from vitpose_scale.cli import run_reporting_errors

    return run_reporting_errors(_plot, args)


if __name__ == "__main__":
    sys.exit(main())
