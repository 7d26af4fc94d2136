"""The ``cloudpipe`` command: a thin click layer over the library.

Each command parses and validates its options, then calls one library function. Heavy imports
(torch, models) happen inside the commands so ``cloudpipe --help`` is instant. A
:class:`~cloudpipe.errors.CloudpipeError` becomes one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cloudpipe.errors import CloudpipeError

EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
NEW_PATH = click.Path(path_type=Path)


class _Group(click.Group):
    """Turns a CloudpipeError raised by any command into one line on stderr and exit 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CloudpipeError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)


def shape_option(name: str, default: tuple[int, int], help: str):
    """An ``H W`` option."""
    return click.option(name, type=(int, int), default=default, show_default=True, metavar="H W", help=help)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="cloudpipe")
def main() -> None:
    """Two-stage submission pipeline for Kaggle's Understanding Clouds from Satellite Images."""


@main.command()
@click.argument("out_dir", type=NEW_PATH)
@click.option("--train", "n_train", type=click.IntRange(min=2), default=100, help="Training images.")
@click.option("--test", "n_test", type=click.IntRange(min=1), default=20, help="Test images.")
@click.option("--height", type=click.IntRange(min=16), default=1400, help="Image height.")
@click.option("--width", type=click.IntRange(min=16), default=2100, help="Image width.")
@click.option("--seed", type=int, default=0, help="Random seed (same seed, same data).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it is not empty.")
def synth(out_dir: Path, n_train: int, n_test: int, height: int, width: int, seed: int, overwrite: bool) -> None:
    """Write a synthetic dataset in the Kaggle layout to OUT_DIR."""
    from cloudpipe.synth import make_dataset

    s = make_dataset(out_dir, train=n_train, test=n_test, shape=(height, width), seed=seed, overwrite=overwrite)
    click.echo(f"wrote {s.train} train and {s.test} test images ({s.shape[0]}x{s.shape[1]}) to {s.out_dir}")


@main.command()
@click.option("--truth", "truth_csv", type=EXISTING_FILE, required=True, help="Truth CSV (train.csv-style).")
@click.option("--pred", "pred_csv", type=EXISTING_FILE, required=True, help="Submission CSV to score.")
@shape_option("--truth-shape", (1400, 2100), "Mask size of the truth CSV.")
@shape_option("--pred-shape", (350, 525), "Mask size of the submission.")
def evaluate(truth_csv: Path, pred_csv: Path, truth_shape: tuple[int, int], pred_shape: tuple[int, int]) -> None:
    """Kaggle mean Dice of a submission, overall and per class.

    Truth masks are resized to the submission's size (nearest-neighbour) when sizes differ.
    """
    from cloudpipe.metrics import evaluate_files

    table = evaluate_files(truth_csv, pred_csv, truth_shape, pred_shape)
    click.echo(format_table([{"class": k, "dice": v} for k, v in table.items()]))


def format_table(rows: list[dict]) -> str:
    """Plain aligned text table of dict rows (floats with 4 decimals)."""
    columns = list(rows[0])
    cells = [[f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
