"""Writing files atomically: under a temporary name in the same folder, renamed into place when complete, so an
interrupted run never leaves a half file that looks complete (a rename within one file system is atomic).

    with atomic_path(path) as tmp:      # any writer: np.save, model.save, savefig...
        write(tmp)
    write_text_atomic(path, text); write_csv(rows, path); save_figure_atomic(fig, path, dpi=110)

Outputs of the package go through here: preprocessing's arrays and manifest, the run dir's reports and model
(history.csv is appended epoch by epoch, TensorBoard's logs/ are its own), the benchmark's and the studies'
reports; enhance.py writes each series into a temporary folder renamed when complete.
"""

import csv
import os
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"  # temporary names; preprocessing sweeps those its interrupted predecessors left


def temporary_path(path):
    """Where `path` is written before it is renamed into place."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")


@contextmanager
def atomic_path(path):
    """The temporary name to write `path` through (temporary_path: the same suffix, so writers that read the
    format from it still can); renamed into place when the block ends, removed if it raises."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)  # no fsync: against an interrupted process, not a power loss (preprocessing streams
        # every series through here, and a sync per file would wait for the disk each time)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(rows, path, columns=None):
    """rows (dicts) as a CSV at path, written atomically; columns: rows[0]'s keys unless given."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def save_figure_atomic(fig, path, **kwargs):
    """fig.savefig(path, **kwargs) through a temporary name."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)
