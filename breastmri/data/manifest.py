"""manifest.csv, the index preprocessing.py writes next to its arrays: its columns, reading it, and choosing slices.

    rows = read_manifest("data/processed", "test")        # dicts, numbers converted
    t, k, n_times, n_positions = _layout_of(rows[0])       # where the slice sits in its DCE series
    rows = [rows[i] for i in spread_slices(rows, 16, 2)]   # 8 slice positions x 2 time points

data_factory.PairedSlices reads its batches through it; the benchmark and the evaluation choose their slices
with evenly_spaced / spread_slices.
"""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from breastmri.files import write_text_atomic
from breastmri.simulate.degrade import NOISE_MODELS

# The columns preprocessing.py writes, in this order (a list: csv's fieldnames compare equal to it).
MANIFEST_COLUMNS = [
    "patient_id", "study_uid", "series_uid", "series_description", "slice_index", "split", "clean_file",
    "noisy_file", "norm_lo", "norm_hi", "sigma_source", "sigma_added", "snr_ratio", "degrade_model", "rows",
    "cols", "sop_instance_uid", "config_hash", "truth_file", "time_index", "n_times", "position_index",
    "n_positions", "dynamic_id", "source_series_uid", "noise_channels",
]
INT_COLUMNS = ("slice_index", "rows", "cols", "time_index", "n_times", "position_index", "n_positions",
               "noise_channels")
FLOAT_COLUMNS = ("norm_lo", "norm_hi", "sigma_source", "sigma_added", "snr_ratio")
# Columns a dataset cannot work without; the others are carried along for evaluation and export.
REQUIRED_COLUMNS = ("patient_id", "series_uid", "slice_index", "split", "clean_file", "noisy_file")


def _number(text, kind):
    """'12' -> 12, '0.5' -> 0.5, '' -> None (a field preprocessing had no value for)."""
    text = text.strip()
    if text == "":
        return None
    return int(float(text)) if kind is int else float(text)


def read_manifest(data_dir, split=None):
    """The rows of <data_dir>/manifest.csv as dicts, numeric fields converted (int / float, '' -> None).

    split: None for every row, or a split name ("train" / "val") to keep only that split's rows.
    Rows keep the manifest's order (series by series, slice by slice). Raises FileNotFoundError when the
    manifest is missing and ValueError when it lacks required columns or the split has no rows.
    """
    path = Path(data_dir) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run `python preprocessing.py --out {data_dir}` first to build the paired "
            "arrays and their manifest")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path} lacks the columns {missing}; it was not written by this preprocessing.py "
                             "(rerun preprocessing.py)")
        rows = []
        for row in reader:
            for column in INT_COLUMNS:
                if column in row:
                    row[column] = _number(row[column], int)
            for column in FLOAT_COLUMNS:
                if column in row:
                    row[column] = _number(row[column], float)
            rows.append(row)
    if split is not None:
        present = sorted({row["split"] for row in rows})
        rows = [row for row in rows if row["split"] == split]
        if not rows:
            raise ValueError(f"{path} has no slices in split '{split}' (splits present: {present or 'none'}); "
                             "check the split name or preprocess.split")
    elif not rows:
        raise ValueError(f"{path} has no rows; rerun preprocessing.py")
    return rows


def _zero(row):
    """Normalized value of zero signal, -lo / (hi - lo), from a manifest row (0 without a recorded range)."""
    lo, hi = row.get("norm_lo"), row.get("norm_hi")
    return -lo / (hi - lo) if lo is not None and hi is not None and hi > lo else 0.0


def _simulated(row):
    """True when the row's noisy image is a recorded draw of a noise model (degrade.NOISE_MODELS, sigma_added
    known): what fresh noise redraws and what a decorrelated target subtracts."""
    return row.get("degrade_model") in NOISE_MODELS and row.get("sigma_added") is not None


def _layout_of(row):
    """(time_index, position_index, n_times, n_positions) of a manifest row; a manifest without the layout
    columns (older preprocessing) reads as one time point of stacked slices."""
    if row.get("time_index") is None:
        return 0, row["slice_index"], 1, row["slice_index"] + 1
    return row["time_index"], row["position_index"], row["n_times"], row["n_positions"]


def series_info(data_dir, row):
    """What preprocessing recorded of a row's series (its sidecar's info: the noise, its spectrum and where they
    were measured; {} without a sidecar)."""
    sidecar = Path(data_dir) / row["noisy_file"].replace("_noisy.npy", ".json")
    return json.loads(sidecar.read_text()).get("info", {}) if sidecar.is_file() else {}


def noise_spectrum_of(data_dir, row):
    """The spectrum of the noise preprocessing added to a row's series: its sidecar's info.noise_spectrum (None:
    white, or no sidecar)."""
    return series_info(data_dir, row).get("noise_spectrum")


def evenly_spaced(n, count):
    """Indices of `count` items spread evenly over range(n), first and last included (all of them if count >= n)."""
    if count is None or count >= n:
        return np.arange(n)
    if count < 1:
        raise ValueError(f"max_slices must be a positive integer or None, got {count}")
    # Spacing (n - 1) / (count - 1) >= 1, so rounding never repeats an index.
    return np.unique(np.round(np.linspace(0, n - 1, count)).astype(int))


def spread_slices(rows, count, times_per_position=1):
    """Indices of `count` of the manifest rows (all of them if count >= len(rows)), sorted, each once:
    count / times_per_position slice positions evenly spaced over the rows' (series, position) pairs, each at
    times_per_position of its time points (all it has, if fewer), spread over its time axis and starting at
    time j for the j-th position, so that the positions together cover every time point; where positions have
    too few time points to make up `count`, evenly spaced rows of the rest fill in. A multi-frame method
    denoises a position's whole (x, y, t) stack in one run (BM4D): 2 time points per position halve its runs for
    the same number of scored slices. times_per_position 1, or series of one time point: evenly_spaced."""
    if times_per_position <= 1 or count is None or count >= len(rows):
        return evenly_spaced(len(rows), count)
    frames = {}  # (series, position) -> {time index: row index}, in manifest order
    for i, r in enumerate(rows):
        t, k, _, _ = _layout_of(r)
        frames.setdefault((r["series_uid"], k), {})[t] = i
    positions = list(frames.values())
    if max(len(p) for p in positions) < 2:
        return evenly_spaced(len(rows), count)
    picked = []
    for j, p in enumerate(evenly_spaced(len(positions), math.ceil(count / times_per_position))):
        times = sorted(positions[p])
        n, m = len(times), min(times_per_position, len(times))  # n / m >= 1 apart: never one time twice
        picked += [positions[p][times[(j + round(i * n / m)) % n]] for i in range(m)]
    picked = picked[:count]
    if len(picked) < count:
        rest = sorted(set(range(len(rows))) - set(picked))
        picked += [rest[i] for i in evenly_spaced(len(rest), count - len(picked))]
    return np.array(sorted(picked))


# --------------------------------------------------------------------------------------------------------------
# Writing: atomically (breastmri.files), so an interrupted run never leaves a half file that looks complete
# --------------------------------------------------------------------------------------------------------------


def write_manifest(path, rows):
    """manifest.csv of `rows` (dicts with the MANIFEST_COLUMNS), left alone when its text would not change."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    text = buffer.getvalue()
    if Path(path).is_file() and Path(path).read_text() == text:
        return  # unchanged: leave the file (and its mtime) alone
    write_text_atomic(path, text)
