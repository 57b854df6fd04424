"""enhance.py's work: find the series under a folder, enhance each, write derived DICOM series atomically.

Each series is written under a temporary name and renamed when complete; a marker records the model and settings,
so a re-run skips finished series and resumes an interrupted one. Anything that cannot be enhanced (not a
magnitude MR image, unreadable pixels, an unsupported pixel format) is skipped with a counted reason, never
ending the run; enhance_summary.json lists every series with its outcome.
"""

import json
import os
import shutil
import time
import traceback
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from breastmri.config import ConfigError
from breastmri.data import preprocess
from breastmri.dicom import index, pixels, scan
from breastmri.dicom.dynamics import assemble_dynamics, member_series
from breastmri.dicom.kinds import check_include_kinds
from breastmri.dicom.writer import (
    derived_series_uid,
    output_series_numbers,
    padding_mask,
    series_folder,
    write_series,
)
from breastmri.enhance.enhancer import Enhancer, load_enhancer, predict_stack
from breastmri.files import (
    left_by_ended_run,
    remove_path,
    save_figure_atomic,
    sweep_stale,
    temporary_name,
    write_text_atomic,
)
from breastmri.restore.predict import MAX_PIXELS, EnhanceError, check_tile, default_tile
from breastmri.simulate.air import masked_region

MARKER = "enhance.json"
SUMMARY = "enhance_summary.json"
TMP_PREFIX = ".tmp-enhance-"
SWAPPED = "-old-"  # an --overwrite's old series, moved aside beside its folder until the new one is in place
# A series whose enhanced values ran above what its source's BitsStored holds: its count is "clipped_pixels".
CLIPPED_NOTE = "values clipped at the top of the source's stored range (BitsStored)"


# One series cannot be enhanced: the same exception preprocessing skips a series with; its `reason` is the short
# counted reason in the summary.
SeriesError = pixels.SeriesReadError
# An exception no check foresaw: its series is skipped and counted, the run goes on, and it exits with status 1.
UNFORESEEN_REASON = "enhance failed"


# --------------------------------------------------------------------------------------------------------------
# One series, atomically
# --------------------------------------------------------------------------------------------------------------

def source_parts(series):
    """[(source series, its rows of the Series)]: the Series itself, or each member of an assembled dynamic (one
    derived series is written per source series, as the scanner stored them)."""
    if not series.dynamic:
        return [(series, slice(None))]
    return [(member_series(series, m), slice(m["start"], m["stop"])) for m in series.dynamic["members"]]


def enhance_series(series, enhancer, out_dir, batch_size=8, tile=None, force_tiling=False, max_pixels=MAX_PIXELS,
                   overwrite=False, preview=False, series_numbers=None):
    """Enhance one Series into a folder per source series under out_dir. Returns one result dict per source
    series, each with "status": "done" or "skipped" (+ "reason", "detail"); never raises for bad data (a
    KeyboardInterrupt still stops the run). An assembled dynamic is enhanced as one time series (the context the
    model was trained with) and written back as its member series; every result names its "dynamic" (None for a
    series that is not one) and "time_points" (the number of time points the model saw the series with)."""
    series_numbers = series_numbers or {}
    time_points = 1 + max((t for t, _ in series.layout), default=0)
    pending, results = [], []
    for part, rows in source_parts(series):
        new_uid = derived_series_uid(part, enhancer, series)
        final = series_folder(out_dir, part, new_uid)
        result = {"source_series_uid": part.series_uid, "series_description": part.series_description,
                  "patient_id": part.patient_id, "output_series_uid": new_uid,
                  "folder": os.path.relpath(final, out_dir), "slices": len(part.frames), "files": part.n_files,
                  "rows": part.rows, "cols": part.cols,
                  "dynamic": series.dynamic["id"] if series.dynamic else None, "time_points": time_points,
                  "volume": part.volume, "notes": list(series.notes)}
        if final.exists() and not overwrite:
            done = (final / MARKER).is_file()  # a complete series of ours, else something else in its place
            results.append(dict(result, status="skipped", reason="exists" if done else "output path taken",
                                detail="output series exists; use --overwrite" if done else
                                f"{final} is not an enhanced series (no {MARKER}); move it or use --overwrite"))
        else:
            pending.append((part, rows, final, result))
    if not pending:
        return results

    started = time.perf_counter()
    inference_before = sum(enhancer.timings)
    try:
        raw, enhanced, padding, lo, hi, info = _enhanced(series, enhancer, batch_size, tile, force_tiling, max_pixels)
    except EnhanceError:
        raise
    except Exception as error:  # noqa: BLE001 - a SeriesError, or an unforeseen failure: this series only, counted
        error = _counted(error)
        return results + [dict(result, status="skipped", reason=error.reason, detail=str(error))
                          for *_, result in pending]
    seconds = (time.perf_counter() - started) / len(pending)
    inference = (sum(enhancer.timings) - inference_before) / len(pending)
    for part, rows, final, result in pending:
        staged = None
        if preview:  # drawn before the series is written, renamed into place right after it
            try:
                staged = save_preview(raw[rows], enhanced[rows], final.parent / temporary_name(f"{final.name}.png"),
                                      f"{part.patient_id} {part.series_description}")
            except Exception as error:  # noqa: BLE001 - a figure problem must not fail the series
                result["preview_error"] = f"{type(error).__name__}: {error}"
        try:
            n_files, clipped = _write_atomically(
                part, enhanced[rows], None if padding is None else padding[rows], enhancer, out_dir, final,
                result["output_series_uid"], series_numbers.get(part.id),
                {"norm_lo": lo, "norm_hi": hi, "size": info, "dynamic": result["dynamic"], "time_points": time_points})
        except Exception as error:  # noqa: BLE001 - as above, for this source series
            error = _counted(error)
            if staged is not None:  # no preview of a series that is not there; an old one stays with its series
                staged.unlink(missing_ok=True)
            results.append(dict(result, status="skipped", reason=error.reason, detail=str(error)))
            continue
        if staged is not None:
            png = final.parent / f"{final.name}.png"
            os.replace(staged, png)
            result["preview"] = os.path.relpath(png, out_dir)
        if clipped:  # brighter than the source's BitsStored can hold: said, not hidden
            result["notes"] = sorted(set(result["notes"]) | {CLIPPED_NOTE})
        results.append(dict(result, status="done", files=n_files, clipped_pixels=clipped, norm_lo=lo, norm_hi=hi,
                            size=info, seconds=round(seconds, 3), inference_seconds=round(inference, 3)))
    return results


def _counted(error):
    """A SeriesError to count: itself, or an unforeseen failure with where it happened (for the bug report)."""
    if isinstance(error, SeriesError):
        return error
    where = traceback.extract_tb(error.__traceback__)[-1]
    return SeriesError(UNFORESEEN_REASON, f"{type(error).__name__}: {error} ({Path(where.filename).name}:"
                                          f"{where.lineno})")


def _enhanced(series, enhancer, batch_size, tile, force_tiling, max_pixels):
    """(raw, enhanced, padding, lo, hi, size info) of a whole series, modality units (n, H, W)."""
    try:
        raw = pixels.read_series(series)
    except SeriesError:
        raise
    except Exception as error:  # noqa: BLE001 - any decoder failure skips this series only
        raise SeriesError("pixel read failed", f"{type(error).__name__}: {error}") from None
    # Padded pixels (PixelPaddingValue) are not image: they take no part in the normalization, the network
    # sees them as the darkest tissue value (lo) instead of an artificial edge, as in training
    # (preprocess.image_range), and write_series restores them.
    padding = padding_mask(series, raw)
    lo, hi = preprocess.source_range(raw, padding, enhancer.cfg["preprocess"]["norm_percentiles"])
    scale = np.float32(hi) - np.float32(lo)
    normalized = (raw - np.float32(lo)) / scale
    if padding is not None:
        normalized[padding] = 0.0
    zero = float(-np.float32(lo) / scale)
    try:
        # context models: the same stacks PairedSlices gives the network in training, from this series'
        # (time point, slice position) layout
        pred, info = predict_stack(enhancer, normalized, batch_size, tile, force_tiling, max_pixels, zero=zero,
                                   layout=series.layout)
    except EnhanceError:
        raise
    except Exception as error:  # noqa: BLE001 - e.g. out of memory on a huge slice: report, go on
        raise SeriesError("inference failed", f"{type(error).__name__}: {error}") from None
    from breastmri.restore import training

    if training.needs_rician_correction(enhancer.cfg, enhancer.cfg["degrade"]["model"]):
        # a self-supervised run learned E[magnitude]: invert the Rician mean with this series' noise, measured
        # as main.py's evaluation measures it on the same normalized series
        from breastmri.restore.denoisers import correct_rician_mean
        from breastmri.simulate.noise import series_sigma

        # padding counts as no signal (it is written back as padding), not as a spike at lo
        measured = normalized if padding is None else np.where(padding, np.float32(zero), normalized)
        pred = correct_rician_mean(pred, series_sigma(measured, zero, series.layout)[0], zero)
    enhanced = pred.astype(np.float64) * float(scale) + lo
    masked = masked_region(raw)
    if masked is not None:  # the air the scanner set to 0 stays 0, as PixelPaddingValue's pixels stay padding
        enhanced[masked] = 0.0
    return raw, enhanced, padding, lo, hi, info


def _write_atomically(part, enhanced, padding, enhancer, out_dir, final, new_uid, series_number, record):
    """Write one derived series under a temporary name, its marker last, then rename it into place (an
    --overwrite swaps the old series out first and puts it back if the new one fails). Returns (files, pixels
    clipped to the source's stored range)."""
    tmp = Path(out_dir) / temporary_name(new_uid, TMP_PREFIX)
    old = final.parent / temporary_name(final.name, TMP_PREFIX, SWAPPED)  # beside its place: restore_swapped
    created = datetime.now()
    try:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            n_files, clipped = write_series(part, enhanced, enhancer, tmp, new_uid, created, padding,
                                            series_number)
            marker = {"source_series_uid": part.series_uid, "output_series_uid": new_uid,
                      "model": str(enhancer.model_path), "model_sha256": enhancer.model_sha,
                      "config_hash": enhancer.config_hash, "volume": part.volume, "slices": len(part.frames),
                      "files": n_files, "clipped_pixels": clipped,
                      **record, "created": created.isoformat(timespec="seconds")}
            (tmp / MARKER).write_text(json.dumps(marker, indent=1, default=float) + "\n")  # last: complete
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # --overwrite: swap the old series out, the new one in, then delete the old one
                remove_path(old)
                os.replace(final, old)
            os.replace(tmp, final)
        except OSError as error:  # a full disk: skip, leave nothing (write_series makes a header value its VR
            # cannot hold a SeriesError "write failed" itself; anything else raised while writing is unforeseen,
            # counted as UNFORESEEN_REASON)
            raise SeriesError("write failed", f"{type(error).__name__}: {error}") from None
        remove_path(old)
        return n_files, clipped
    except BaseException:
        if old.exists() and not final.exists():
            os.replace(old, final)  # the new series failed after the old one was moved away: put it back
        elif old.exists():
            remove_path(old)  # interrupted (Ctrl-C) while deleting the old series: finish, leave no half of it
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def numbers_in_output(studies, rewritten):
    """{study uid: SeriesNumbers of the enhanced series already in its study folder} (studies: {study uid: folder};
    read from one file of each): an earlier run's outputs keep their numbers, and a series of this run never takes
    one of them. The `rewritten` series folders (this run writes them) are left out."""
    numbers = {}
    for study_uid, study in studies.items():
        for marker in study.glob(f"*/{MARKER}") if study.is_dir() else ():
            folder = marker.parent
            first = next(iter(sorted(folder.glob("*.dcm"))), None)
            if folder in rewritten or first is None:
                continue
            try:
                number = pixels.open_dataset(first, stop_before_pixels=True).get("SeriesNumber")
            except Exception:  # noqa: BLE001 - an unreadable earlier output only loses its number's reservation
                continue
            if number not in (None, ""):
                numbers.setdefault(study_uid, set()).add(int(number))
    return numbers


def restore_swapped(out_dir):
    """Put back every old series an --overwrite moved aside and a killed run left there (its process ended): into
    its folder where no new series took its place, else removed. Returns the number put back."""
    restored = 0
    for old in Path(out_dir).rglob(f"{TMP_PREFIX}*{SWAPPED}*"):
        if not left_by_ended_run(old.name, TMP_PREFIX):
            continue
        final = old.with_name(old.name.split(SWAPPED, 1)[1])
        if final.exists():
            remove_path(old)
        else:
            os.replace(old, final)
            restored += 1
    return restored


# --------------------------------------------------------------------------------------------------------------
# Preview
# --------------------------------------------------------------------------------------------------------------

def save_preview(original, enhanced, path, title=""):
    """PNG with one row per shown slice: original | enhanced | enhanced - original (modality units).

    original, enhanced: (n, H, W). Rows: the middle slice and, when different, the brightest one (in a DCE
    series the peak of enhancement). Both images share one gray window (0.5-99.5 % of the original) so they can
    be compared by eye; the difference is on a symmetric blue-red scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    original, enhanced = np.asarray(original, np.float32), np.asarray(enhanced, np.float32)
    n = len(original)
    rows = sorted({n // 2, int(np.argmax(original.reshape(n, -1).mean(axis=1)))})
    vmin, vmax = np.percentile(original, [0.5, 99.5])
    diff = enhanced - original
    dmax = float(np.percentile(np.abs(diff), 99.5)) or 1.0
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3.1 * len(rows)), squeeze=False)
    for ax_row, k in zip(axes, rows):
        panels = [(original[k], "original", "gray", vmin, vmax), (enhanced[k], "enhanced", "gray", vmin, vmax),
                  (diff[k], "enhanced - original", "RdBu_r", -dmax, dmax)]
        for ax, (img, name, cmap, lo, hi) in zip(ax_row, panels):
            shown = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi)
            ax.set_title(f"{name} (slice {k})", fontsize=9)
            ax.axis("off")
        fig.colorbar(shown, ax=ax_row[2], fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return Path(path)


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------

def collect_series(input_path, out_dir=None, series_filter="", include_kinds=(), assemble="auto"):
    """(series_list, Skips, files_seen, series_skips list) for a DICOM file, a folder or a tree.

    The same rule as preprocessing (index.index, then dynamics.assemble_dynamics): series_filter, include_kinds
    and assemble are the run's preprocess settings; files enhance.py wrote are skipped as
    kinds.ENHANCE_OUTPUT_REASON. Skips holds the
    file counts and the series left out while indexing (series filter, mixed planes, mismatched shapes); series
    with files inside out_dir that are not our output (the output folder placed inside the input tree) are in the
    series_skips list, so a second run never enhances anything in its own output folder."""
    input_path = Path(input_path)
    include_kinds = check_include_kinds(include_kinds)
    if input_path.is_file():
        skips = scan.Skips()
        record = scan.scan_file(input_path, include_kinds)
        if isinstance(record, str):
            skips.add_file(record, str(input_path))
            return [], skips, 1, []
        series_list = index.group_series([record], input_path.parent, skips, include_kinds)
        return index.filter_series(series_list, series_filter, skips), skips, 1, []
    series_list, skips, files_seen = index.index(input_path, series_filter, include_kinds)
    series_list = assemble_dynamics(series_list, assemble)
    kept, skipped = [], []
    out = Path(out_dir).resolve() if out_dir is not None else None
    for s in series_list:
        if out is not None and out in Path(s.frames[0][0]).resolve().parents:
            skipped.append({"source_series_uid": s.series_uid, "series_description": s.series_description,
                            "patient_id": s.patient_id, "slices": len(s.frames), "files": s.n_files,
                            "status": "skipped",
                            "reason": "inside output folder", "detail": "series lies inside --output"})
        else:
            kept.append(s)
    return kept, skips, files_seen, skipped


def _device():
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return f"GPU ({gpus[0].name})" if gpus else "CPU"


def run(model, input_path, out_dir, batch_size=8, preview=False, overwrite=False, tile=None, force_tiling=False,
        max_pixels=MAX_PIXELS, progress=True):
    """Enhance every MR series under input_path into out_dir; returns the summary (also in enhance_summary.json).

    model: a run dir, a model.keras path or an Enhancer already loaded. Raises EnhanceError for unusable input
    (missing paths, bad options); a failing series is skipped and reported, never raised."""
    started = time.perf_counter()
    input_path, out_dir = Path(input_path), Path(out_dir)
    if not input_path.exists():
        raise EnhanceError(f"--input {input_path} does not exist")
    if out_dir.exists() and not out_dir.is_dir():
        raise EnhanceError(f"--output {out_dir} is a file; give a folder")
    if out_dir.resolve() == input_path.resolve() or out_dir.resolve() in input_path.resolve().parents:
        raise EnhanceError(f"--output {out_dir} holds --input {input_path}: give a folder outside it (or inside it)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise EnhanceError(f"--batch-size {batch_size}: give an integer >= 1")
    enhancer = model if isinstance(model, Enhancer) else load_enhancer(model)
    if tile is not None and enhancer.name == "unet":
        check_tile(tile, enhancer.multiple, enhancer.margin)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        restore_swapped(out_dir)  # an --overwrite killed between its renames: the old series back
        sweep_stale(out_dir, TMP_PREFIX)  # series folders of runs that were killed
        for study in out_dir.glob("*/*/"):
            sweep_stale(study)  # a preview whose writer was killed
    except OSError as error:
        raise EnhanceError(f"--output {out_dir}: {error}") from None

    pre = enhancer.cfg["preprocess"]
    try:
        series_list, skips, files_seen, results = collect_series(input_path, out_dir, pre["series_filter"],
                                                                 pre["include_kinds"], pre["assemble_dynamics"])
    except ConfigError as error:
        raise EnhanceError(f"{enhancer.model_path.parent / 'config.yaml'}: {error}") from None
    if not series_list and not results:  # a wrong --input, as preprocessing.py says it for its --dicom-root
        skipped = ", ".join(f"{reason}: {n}" for reason, n in sorted(skips.files.items())) or "none"
        raise EnhanceError(f"no MR series to enhance under {input_path} ({files_seen} files seen; skipped: {skipped})")
    n_slices = sum(len(s.frames) for s in series_list)
    print(f"enhance: {len(series_list)} MR series ({n_slices} slices) in {files_seen} files under {input_path}; "
          f"model {enhancer.name} ({enhancer.model_path}, config {enhancer.config_hash})")
    inference_before = sum(enhancer.timings)
    bar = tqdm(total=n_slices, unit="slice", desc="enhance", disable=not progress or not n_slices)
    # each source series' output folder; those this run writes (new, or --overwrite) are numbered
    parts = [(part, series_folder(out_dir, part, derived_series_uid(part, enhancer, s)))
             for s in series_list for part, _ in source_parts(s)]
    written = {part.id: folder for part, folder in parts if overwrite or not (folder / MARKER).is_file()}
    series_numbers = output_series_numbers(
        [part for part, _ in parts],
        numbers_in_output({part.study_uid: folder.parent for part, folder in parts}, set(written.values())),
        set(written))
    for s in series_list:
        results.extend(enhance_series(s, enhancer, out_dir, batch_size, tile, force_tiling, max_pixels,
                                      overwrite, preview, series_numbers))
        bar.update(len(s.frames))
    bar.close()

    done = [r for r in results if r["status"] == "done"]
    # every file seen is written or counted: those skipped while indexing, and those of each series skipped since
    file_skips = Counter(skips.files)
    for r in results:
        if r["status"] == "skipped":
            file_skips[r["reason"]] += r["files"]
    slices = sum(r["slices"] for r in done)
    seconds = time.perf_counter() - started
    inference = sum(enhancer.timings) - inference_before
    summary = {
        "input": str(input_path), "output": str(out_dir),
        "model": str(enhancer.model_path), "model_name": enhancer.name, "model_sha256": enhancer.model_sha,
        "config_hash": enhancer.config_hash, "norm_percentiles": enhancer.cfg["preprocess"]["norm_percentiles"],
        "size_handling": {enhancer.name: enhancer.size_handling},
        "tiling": {"tile": tile if tile is not None else default_tile(enhancer.multiple, enhancer.margin),
                   "margin_px": enhancer.margin, "forced": bool(force_tiling), "max_pixels": max_pixels,
                   "series_tiled": sum(bool(r["size"]["tiled"]) for r in done)}
        if enhancer.name == "unet" else "not applicable: fixed S x S input, resized",
        "series_filter": pre["series_filter"], "include_kinds": list(pre["include_kinds"]),
        "files_seen": files_seen, "files_skipped": dict(sorted(file_skips.items())),
        # series left out while indexing (series filter, mixed planes, ...) and series that failed or exist
        "series_done": len(done), "series_skipped": dict(sorted((skips.series + Counter(
            r["reason"] for r in results if r["status"] == "skipped")).items())),
        "slices": slices, "seconds": round(seconds, 3), "inference_seconds": round(inference, 3),
        "ms_per_slice": round(1000 * inference / slices, 2) if slices else None,
        "ms_per_slice_total": round(1000 * seconds / slices, 2) if slices else None,
        "batch_size": batch_size, "device": _device(),
        "series": results,
    }
    try:
        write_text_atomic(out_dir / SUMMARY, json.dumps(summary, indent=2, default=float) + "\n")
    except OSError as error:
        raise EnhanceError(f"cannot write {out_dir / SUMMARY}: {error}") from None
    skipped = ", ".join(f"{reason}: {n}" for reason, n in summary["series_skipped"].items()) or "none"
    speed = f" ({summary['ms_per_slice']} ms/slice inference)" if slices else ""
    print(f"enhanced {len(done)} series, {slices} slices in {seconds:.1f} s{speed}; series skipped: {skipped}; "
          f"files skipped: {sum(file_skips.values())} -> {out_dir / SUMMARY}")
    return summary
