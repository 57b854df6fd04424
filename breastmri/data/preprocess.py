"""DICOM tree -> paired (clean, degraded) slice arrays (+ the noise-free truth of demo data) + manifest.csv +
summary.json.

    python preprocessing.py [--dicom-root DIR] [--out DIR] [--config FILE] [--set KEY=VALUE] [--workers N]
    python preprocessing.py --benchmark [--dicom-root DIR] [--workers 2]   # slices/s and peak memory

Without --dicom-root the embedded demo tree is used (demo_tree.ensure_demo_tree with cfg["demo"]).

What happens, in order:
1. index.index: every file's header is read (no pixel data). MR image objects (MR, Enhanced MR, Legacy
   Converted Enhanced MR) are grouped into series by SeriesInstanceUID; everything else (CT, PT, SEG, SR,
   presentation states, MR spectroscopy, colour, non-DICOM, truncated or unreadable files) is skipped with a
   counted reason. So is every MR image that is not magnitude anatomy (image_kinds: phase, real and imaginary
   images, parametric maps, localizers, subtractions, projections) unless preprocess.include_kinds names its kind,
   and every object enhance.py wrote (written_by_enhance). A regex on SeriesDescription (preprocess.series_filter)
   can narrow the series.
2. read_series: pixels with the modality rescale (slope/intercept, per frame for enhanced objects) applied.
3. robust_range: per-series percentiles map to 0 and 1: those of the *degraded* series (step 4), the image that
   inference has (enhance.py applies the same rule to its input); the clean image and the truth take the same
   lo/hi. Nothing is clipped: values above hi are real tissue (enhancing lesions are the brightest thing in a DCE
   series), and clipping would make normalization impossible to undo exactly for reporting in scanner units.
4. degrade.degrade: the simulated lower-field image, at acquisition resolution (resizing first would turn white
   noise into correlated blobs). degrade.model none (a user's own 1.5T scans, for main.py's self-supervised
   train.mode): the input is the noisy image, nothing is simulated, no clean array is written (`clean_file` empty).
   The demo generator also leaves the noise-free signal it simulated next to each DCE series (read_truth); it is
   normalized with the same lo/hi into a third array per series (`truth_file` in the manifest, empty for real
   data), the one reference that carries no noise of its own.
5. resize_square: with preprocess.image_size null (the default) nothing: the arrays keep each series' acquisition
   matrix, the grid the fully convolutional U-Net is applied on in enhance.py. With a size (the thesis: 512), pad to
   a square (never distort the aspect ratio), then resize; enhance.py then resizes in and out the same way.
6. split_patients: a seeded patient-level train/val/test split by hash threshold (a patient is in one split only).
7. Each series is written by one worker: arrays under temporary names, renamed when complete, then a sidecar
   arrays/<series_key>.json with its manifest rows and the hash of the settings the arrays depend on. A re-run
   skips series whose sidecar matches, so an interrupted run resumes; manifest.csv and summary.json are
   assembled from the sidecars of the current index and written atomically.

Slice order within a series (slice_index, the first array axis): see index.
"""

import hashlib
import json
import logging
import os
import re
import resource
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from breastmri.config import ConfigError, config_hash
from breastmri.data.grid import square_slice
from breastmri.data.manifest import write_manifest
from breastmri.data.shards import in_share
from breastmri.data.splits import SPLITS, check_patient_split, check_split_fractions, split_patients, split_warnings
from breastmri.dicom.dynamics import LEFT_OUT_NOTE, assemble_dynamics, check_mode, describe_dynamic, source_series_uids
from breastmri.dicom.index import scan_tree
from breastmri.dicom.kinds import check_include_kinds
from breastmri.dicom.pixels import SeriesReadError, read_series, read_truth
from breastmri.files import atomic_path, sweep_stale, write_text_atomic
from breastmri.simulate.degrade import MODELS, SPECTRA, degrade, series_rng, snr_ratio
from breastmri.simulate.noise import NOISE_RULES

log = logging.getLogger("preprocessing")

# The preprocess keys the arrays depend on (split and series_filter only change which rows are listed
# and how they are split, so changing them does not recompute any array).
ARRAY_PREPROCESS_KEYS = ("image_size", "dtype", "norm_percentiles")
DTYPES = ("float32", "float16")


class PreprocessError(Exception):
    """A problem with the input (missing root, no usable MR image) that stops the run; the CLI prints it on
    one line and exits with status 2."""


def robust_range(stack, percentiles):
    """(lo, hi) = the given percentiles (e.g. [0.5, 99.5]) of the whole stack; normalize as (x-lo)/(hi-lo).
    Both are rounded to float32 so that normalizing and undoing it use exactly the recorded numbers."""
    p_lo, p_hi = percentiles
    if not 0 <= p_lo < p_hi <= 100:
        raise ConfigError(f"preprocess.norm_percentiles {percentiles} must satisfy 0 <= lo < hi <= 100")
    lo, hi = np.percentile(np.asarray(stack, dtype=np.float32), [p_lo, p_hi])
    return float(np.float32(lo)), float(np.float32(hi))


# A series whose pixels take a handful of values is a mask or a label map a workstation wrote (I-SPY's "Analysis
# Mask": 0 and 1000), whatever its header says: no noise to read, nothing to restore. An MR image has thousands.
MAX_LABEL_VALUES = 8
LABEL_MAP_REASON = "mask or label map (few distinct values)"


def source_range(stack, padding, percentiles):
    """image_range of a series as read (preprocessing and enhance.py alike), refused as LABEL_MAP_REASON when its
    pixels take at most MAX_LABEL_VALUES values (in a sample of a million): checked once, on the source, not on
    the degraded series that image_range also normalizes."""
    image = stack if padding is None else stack[~padding]
    step = max(1, image.size // 1_000_000)
    step += step > 1 and step % stack.shape[-1] == 0  # a multiple of the row length would sample one column
    values = np.unique(image.ravel()[::step])
    if 1 < values.size <= MAX_LABEL_VALUES:
        raise SeriesReadError(LABEL_MAP_REASON, f"{values.size} distinct values")
    return image_range(stack, padding, percentiles)


def image_range(stack, padding, percentiles, what=""):
    """robust_range of the pixels that are image: padded pixels (padding: writer.padding_mask's boolean
    mask of PixelPaddingValue pixels, or None) take no part, here and in enhance.py, which then give them the
    normalized value 0. Raises SeriesReadError("constant image") when no pixel is left or all are one value;
    `what` ends its detail."""
    image = stack if padding is None else stack[~padding]
    if image.size == 0:
        raise SeriesReadError("constant image", f"every pixel is padding (PixelPaddingValue){what}")
    lo, hi = robust_range(image, percentiles)
    if not hi > lo:
        raise SeriesReadError("constant image", f"lo = hi = {lo}{what}")
    return lo, hi


# --------------------------------------------------------------------------------------------------------------
# 7. One series per worker, resumable
# --------------------------------------------------------------------------------------------------------------

def series_key(series):
    """<sanitized patient_id>_<sha1(series id)[:10]>: unique per series (index.Series.id), readable per patient."""
    patient = re.sub(r"[^A-Za-z0-9._-]+", "-", series.patient_id).strip("-.")[:48] or "unknown"
    return f"{patient}_{hashlib.sha1(series.id.encode()).hexdigest()[:10]}"


def arrays_hash(cfg):
    """Hash of what the arrays depend on: seed, degrade, the preprocess keys that change pixels, and the version of
    the rules that read a series' noise (noise.NOISE_RULES)."""
    part = {"seed": cfg["seed"], "degrade": cfg["degrade"], "noise_rules": NOISE_RULES,
            "preprocess": {k: cfg["preprocess"][k] for k in ARRAY_PREPROCESS_KEYS}}
    return config_hash(part)


def _fingerprint(series):
    """Identity of a series' content as indexed: its images, their order, their rescale and whether it declares
    padding (its pixels then leave the normalization: arrays written before that rule are redone)."""
    text = json.dumps([series.rows, series.cols, series.sop_instance_uids, [f for _, f in series.frames],
                       series.slopes, series.intercepts, series.truth_dir is not None, series.layout,
                       series.padded])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _save_square(path, stack, size, pad_value, dtype):
    """Pad+resize `stack` slice by slice (size None: keep the acquisition matrix, no padding) and stream the slices
    into an .npy under a temporary name, then rename it. Memory stays at one acquisition-resolution stack whatever
    the output size, and no msync is forced (an np.memmap flush would wait for the disk on every series)."""
    shape = stack.shape[1:] if size is None else (size, size)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": (len(stack),) + tuple(shape)}
    with atomic_path(path) as tmp, open(tmp, "wb") as fp:
        np.lib.format.write_array_header_1_0(fp, header)
        for img in stack:
            img = img if size is None else square_slice(img, size, pad_value)
            fp.write(np.ascontiguousarray(img).astype(dtype, copy=False).tobytes())


def process_series(series, out_dir, cfg, chash):
    """Read, normalize, degrade, resize and write one series. Returns {"key", "status": "ok", "slices",
    "info"} or {"key", "status": "skipped", "reason", "detail"}; never raises for bad data."""
    key = series_key(series)
    arrays = Path(out_dir) / "arrays"
    pre = cfg["preprocess"]
    from breastmri.dicom.writer import padding_mask

    try:
        raw = read_series(series)
        padding = padding_mask(series, raw)
        lo, hi = source_range(raw, padding, pre["norm_percentiles"])
    except SeriesReadError as error:
        return {"key": key, "status": "skipped", "reason": error.reason, "detail": str(error)}
    except Exception as error:  # noqa: BLE001 - a decoder failure skips this series only
        return {"key": key, "status": "skipped", "reason": "pixel read failed",
                "detail": f"{type(error).__name__}: {error}"}
    # Degrade in the clean series' normalized units (the noise estimate and the simulation work on a [0, 1]-ish
    # scale), then renormalize all three images with the robust range of the *degraded* series: at inference only
    # the degraded image exists (enhance.py computes the same robust_range on its input), so the network must learn
    # on exactly that scale. The clean image and the truth follow with the same lo/hi.
    scale = np.float32(hi) - np.float32(lo)
    clean = raw
    clean -= np.float32(lo)
    clean /= scale
    zero = float(-np.float32(lo) / scale)
    if padding is not None:  # no signal there: the simulation gives it the noise of air
        clean[padding] = zero
    try:
        noisy, info = degrade(clean, cfg["degrade"], series_rng(cfg["seed"], series.id), zero=zero,
                              layout=series.layout)
    except ConfigError:  # the settings, not the series: every series would fail
        raise
    except Exception as error:  # noqa: BLE001 - a series the simulation cannot take skips alone, counted
        return {"key": key, "status": "skipped", "reason": "simulation failed",
                "detail": f"{type(error).__name__}: {error}"}
    # degrade.model none: the input is the noisy image and there is no clean one (noisy is clean, the same array)
    stacks = (noisy,) if noisy is clean else (clean, noisy)
    for stack in stacks:  # back to modality units, in place
        stack *= scale
        stack += np.float32(lo)
    try:
        lo, hi = image_range(noisy, padding, pre["norm_percentiles"], " (degraded)")
    except SeriesReadError as error:
        return {"key": key, "status": "skipped", "reason": error.reason, "detail": str(error)}
    info = dict(info, sigma_source=info["sigma_source"] * float(scale) / (hi - lo),
                sigma_added=info["sigma_added"] * float(scale) / (hi - lo))
    scale = np.float32(hi) - np.float32(lo)
    for stack in stacks:
        stack -= np.float32(lo)
        stack /= scale
        if padding is not None:  # what enhance.py feeds the network there (the pixels are written back as padding)
            stack[padding] = 0.0
    zero = float(-np.float32(lo) / scale)  # normalized value of zero signal
    size = None if pre["image_size"] is None else int(pre["image_size"])
    dtype = np.dtype(pre["dtype"])
    # The old sidecar goes first: arrays half-rewritten under new settings must never pass for the old ones.
    (arrays / f"{key}.json").unlink(missing_ok=True)
    clean_file = "" if noisy is clean else f"arrays/{key}_clean.npy"
    if clean_file:
        _save_square(arrays / f"{key}_clean.npy", clean, size, zero, dtype)
    _save_square(arrays / f"{key}_noisy.npy", noisy, size, zero, dtype)
    del noisy, clean
    truth = read_truth(series)
    truth_file = ""
    if truth is not None:
        # the truth takes the clean image's exact path: same lo/hi, same zero, same pad and resize
        truth -= np.float32(lo)
        truth /= scale
        if padding is not None:
            truth[padding] = 0.0
        truth_file = f"arrays/{key}_truth.npy"
        _save_square(arrays / f"{key}_truth.npy", truth, size, zero, dtype)
    layout = series.layout or [(0, i) for i in range(len(series.sop_instance_uids))]
    n_times, n_positions = 1 + max(t for t, _ in layout), 1 + max(k for _, k in layout)
    sources = source_series_uids(series)
    rows = [{
        "patient_id": series.patient_id, "study_uid": series.study_uid, "series_uid": series.id,
        "series_description": series.series_description, "slice_index": i,
        "clean_file": clean_file, "noisy_file": f"arrays/{key}_noisy.npy",
        "norm_lo": lo, "norm_hi": hi, "sigma_source": info["sigma_source"], "sigma_added": info["sigma_added"],
        "snr_ratio": info["snr_ratio"], "degrade_model": info["model"], "rows": series.rows, "cols": series.cols,
        "sop_instance_uid": sop, "config_hash": chash, "truth_file": truth_file,
        "time_index": t, "n_times": n_times, "position_index": k, "n_positions": n_positions,
        "dynamic_id": series.dynamic["id"] if series.dynamic else "", "source_series_uid": sources[i]}
        for i, (sop, (t, k)) in enumerate(zip(series.sop_instance_uids, layout))]
    sidecar = {"series_key": key, "config_hash": chash, "fingerprint": _fingerprint(series),
               "slices": len(rows), "info": info, "field_strength_t": series.field_strength_t,
               "notes": series.notes, "rows": rows}
    # Written last: its presence (with a matching hash) is what marks the series as done.
    write_text_atomic(arrays / f"{key}.json", json.dumps(sidecar, default=float))
    return {"key": key, "status": "ok", "slices": len(rows), "info": info}


def _reusable(series, arrays, chash):
    """The sidecar of a finished series with the same settings and content, or None."""
    key = series_key(series)
    path = arrays / f"{key}.json"
    if not path.is_file():
        return None
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if sidecar.get("config_hash") != chash or sidecar.get("fingerprint") != _fingerprint(series):
        return None
    needed = ([f"{key}_clean.npy"] * (sidecar.get("info", {}).get("model") != "none") + [f"{key}_noisy.npy"]
              + [f"{key}_truth.npy"] * (series.truth_dir is not None))
    if not all((arrays / name).is_file() for name in needed):
        return None
    return sidecar


def _init_worker(parent):
    cv2.setNumThreads(1)  # one process per core already; cv2's own threads would only oversubscribe
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    threading.Thread(target=_end_with_parent, args=(parent,), daemon=True).start()


def _end_with_parent(parent):
    """A worker's watch: when the process that started it is gone (killed; SIGKILL leaves it no time to stop its
    pool) the worker ends too, instead of working on for nobody."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def check_config(cfg):
    """Raise ConfigError for preprocess/degrade values the pipeline cannot use (before any work)."""
    pre, deg = cfg["preprocess"], cfg["degrade"]
    if pre["image_size"] is not None and (not isinstance(pre["image_size"], int) or pre["image_size"] < 8):
        raise ConfigError(f"preprocess.image_size is {pre['image_size']!r}; give an integer >= 8 (e.g. 512), or "
                          "null to keep each series' acquisition matrix")
    check_mode(pre["assemble_dynamics"])
    if pre["dtype"] not in DTYPES:
        raise ConfigError(f"preprocess.dtype is {pre['dtype']!r}; choose one of {', '.join(DTYPES)}")
    if deg["noise_spectrum"] not in SPECTRA:
        raise ConfigError(f"degrade.noise_spectrum is {deg['noise_spectrum']!r}; choose one of {', '.join(SPECTRA)}")
    if deg["model"] not in MODELS:
        raise ConfigError(f"degrade.model is {deg['model']!r}; choose one of {', '.join(MODELS)}")
    if len(pre["norm_percentiles"]) != 2:
        raise ConfigError("preprocess.norm_percentiles needs two numbers [lo, hi]")
    robust_range(np.zeros(2, np.float32), pre["norm_percentiles"])  # validates the order
    check_split_fractions(pre["split"])
    check_include_kinds(pre["include_kinds"])
    if deg["model"] == "field":
        snr_ratio(deg)
        scale = deg["resolution_scale"]
        if scale is not None and not 0 < float(scale) <= 1:
            raise ConfigError(f"degrade.resolution_scale is {scale}; it must lie in (0, 1]")


def run(dicom_root, out_dir, cfg, workers=1, progress=True, shard=None):
    """The whole pipeline; returns the summary dict (also written to <out_dir>/summary.json).

    workers: processes (ProcessPoolExecutor, spawn start method so that a parent that has loaded TensorFlow or
    other threaded libraries is never forked); 1 runs everything in this process. Raises PreprocessError for a
    missing root or a tree without usable MR images, ConfigError for unusable settings. shard: (i, n), the i-th
    share of the patients only (shards.in_share; preprocessing.py --shard i/n, joined by --merge)."""
    started = time.perf_counter()
    check_config(cfg)
    root, out = Path(dicom_root), Path(out_dir)
    if not root.is_dir():
        raise PreprocessError(f"DICOM root {root} does not exist or is not a folder")
    try:  # before the tree is indexed: an --out that cannot be written ends the run now, in one line
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as error:
        raise PreprocessError(f"--out {out}: {error.strerror or error}") from None
    # pydicom logs per-file warnings and decoder tracebacks; the problems are counted and reported instead.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    pool = None
    if workers > 1:
        import multiprocessing

        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(os.getpid(),))
        for _ in range(workers):  # start the workers now: they import while this process reads headers
            pool.submit(os.getpid)
    try:
        series_list, skips, files_seen = scan_tree(root, cfg["preprocess"]["series_filter"], pool, workers,
                                                exclude=out, progress=progress,
                                                include_kinds=cfg["preprocess"]["include_kinds"])
        series_found = len(series_list) + sum(skips.series.values())  # before any pixel was read
        # a DCE stored one series per time point becomes one time series (its members keep their own uids)
        series_list = assemble_dynamics(series_list, cfg["preprocess"]["assemble_dynamics"])
        series_list = [s for s in series_list if not _other_field(s, cfg, skips)]
        patients = {s.patient_id for s in series_list}
        series_list = [s for s in series_list if in_share(s.patient_id, shard)]
        if shard is not None and patients and not series_list:
            raise PreprocessError(f"share {shard[0]}/{shard[1]} holds none of the {len(patients)} patients under "
                                  f"{root}; use fewer shares")
        indexed = time.perf_counter()
        if not series_list:
            other = (f"; {skips.series[OTHER_FIELD_REASON]} series at another field (e.g. "
                     f"{skips.examples[OTHER_FIELD_REASON]}): set degrade.source_field_t to their field to use them"
                     if skips.series.get(OTHER_FIELD_REASON) else "")
            raise PreprocessError(f"no usable MR image under {root} ({files_seen} files seen; skipped: "
                                  f"{_format_counts(skips.files) or 'none'}{other})")
        n_slices = sum(len(s.frames) for s in series_list)
        log.info("indexed %d files in %.1f s: %d MR series, %d slices, %d patients", files_seen,
                 indexed - started, len(series_list), n_slices, len({s.patient_id for s in series_list}))
        arrays = out / "arrays"
        arrays.mkdir(parents=True, exist_ok=True)
        sweep_stale(arrays)  # left by an interrupted run
        chash = arrays_hash(cfg)
        results, todo = {}, []
        for s in series_list:
            sidecar = _reusable(s, arrays, chash)
            if sidecar is not None:
                results[s.id] = {"key": series_key(s), "status": "reused", "slices": sidecar["slices"],
                                         "info": sidecar["info"]}
            else:
                todo.append(s)
        if todo:
            # Arrays are about to change: a manifest of an earlier run must not outlive an interrupted one.
            (out / "manifest.csv").unlink(missing_ok=True)
        bar = tqdm(total=sum(len(s.frames) for s in todo), unit="slice", desc="preprocess",
                   disable=not progress or not todo, mininterval=1.0)
        if pool is None:
            for s in todo:
                results[s.id] = process_series(s, out, cfg, chash)
                bar.update(len(s.frames))
        else:
            futures = {pool.submit(process_series, s, out, cfg, chash): s for s in todo}
            for future in as_completed(futures):
                s = futures[future]
                results[s.id] = future.result()
                bar.update(len(s.frames))
        bar.close()
    except BaseException:  # Ctrl-C or a crash: drop queued series instead of finishing them
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            pool = None
        raise
    finally:
        if pool is not None:
            pool.shutdown()
    processed = time.perf_counter()

    used = []
    for s in series_list:
        result = results[s.id]
        if result["status"] == "skipped":
            skips.add_series(result["reason"], s.n_files, f"{result['key']}: {result['detail']}")
        else:
            used.append(s)
    if not used:
        raise PreprocessError(f"no usable MR image under {root}: all {len(series_list)} MR series failed "
                              f"({_format_counts(skips.series)})")
    rows = []
    for s in used:
        sidecar = json.loads((arrays / f"{series_key(s)}.json").read_text())
        # noise_channels: the chi law's receive channels the 3T image's air fits (0: no air to fit), the noise floor
        # a target of the expected 3T magnitude carries (train.target expected)
        channels = int(sidecar["info"].get("background_channels", 0))
        rows.extend(dict(row, noise_channels=channels) for row in sidecar["rows"])
    split = split_patients([s.patient_id for s in used], cfg["preprocess"]["split"], cfg["seed"])
    for row in rows:
        row["split"] = split[row["patient_id"]]
    check_patient_split(rows)
    write_manifest(out / "manifest.csv", rows)

    infos = [results[s.id]["info"] for s in used]
    sigma_methods = Counter(i.get("sigma_method", "") for i in infos)
    field_strengths = Counter(str(s.field_strength_t) for s in used)
    summary = {
        "dicom_root": str(root), "out_dir": str(out), "files_seen": files_seen,
        "files_used": sum(s.n_files for s in used), "files_skipped": dict(sorted(skips.files.items())),
        "series_found": series_found, "series_used": len(used),
        "series_processed": sum(results[s.id]["status"] == "ok" for s in used),
        "series_reused": sum(results[s.id]["status"] == "reused" for s in used),
        "series_skipped": dict(sorted(skips.series.items())),
        "skip_examples": {r: str(e) for r, e in sorted(skips.examples.items())},
        "slices": len(rows),
        "patients": {name: sum(v == name for v in split.values()) for name in SPLITS},
        "patients_per_split": {name: sorted(p for p, v in split.items() if v == name) for name in SPLITS},
        "split_fractions": list(check_split_fractions(cfg["preprocess"]["split"])),
        "split_warnings": split_warnings(split, cfg["preprocess"]["split"]),
        "slices_per_split": {name: sum(r["split"] == name for r in rows) for name in SPLITS},
        "sigma_methods": dict(sigma_methods),
        # series whose noise estimates (background, frame difference, wavelet) differ by more than 30%: one of them
        # reads something other than the noise (masked air, motion, correlated noise, texture)
        "sigma_disagreements": [{"series_uid": s.id, "series_description": s.series_description,
                                 "method": results[s.id]["info"].get("sigma_method"),
                                 "estimates": results[s.id]["info"].get("sigma_estimates")}
                                for s in used if results[s.id]["info"].get("sigma_disagree")],
        "series_with_masked_background": sum(bool(i.get("masked_background")) for i in infos),
        "field_strengths_t": dict(field_strengths),
        "series_notes": dict(Counter(n for s in used for n in s.notes)),
        "dynamics": [describe_dynamic(s) for s in used if s.dynamic],
        "series_with_truth": sum(r["truth_file"] != "" for r in rows if r["slice_index"] == 0),
        "image_size": cfg["preprocess"]["image_size"], "dtype": cfg["preprocess"]["dtype"],
        "config_hash": chash, "workers": workers, "shard": list(shard) if shard else None,
        "seconds_index": round(indexed - started, 3), "seconds_process": round(processed - indexed, 3),
        "seconds": round(time.perf_counter() - started, 3),
        "config": cfg,
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    _log_skips(skips)
    for note in summary["split_warnings"]:
        log.warning("split: %s", note)
    if summary["sigma_disagreements"]:
        log.warning("%d series have noise estimates more than 30%% apart (summary.json sigma_disagreements); the "
                    "recorded sigma_method decides", len(summary["sigma_disagreements"]))
    if summary["series_notes"].get(LEFT_OUT_NOTE):
        log.warning("%d series are time points of a dynamic with some of their images missing (unreadable or not "
                    "there): each is processed alone, without its time context (series_notes)",
                    summary["series_notes"][LEFT_OUT_NOTE])
    if sigma_methods.get("wavelet"):
        log.warning("%d series have neither air nor repeated frames to read their noise from: it was read from their "
                    "finest texture (sigma_method wavelet), which reads it up to several times off either way (a "
                    "masked T2 or single-phase series), so their simulated 1.5T may be far from the configured SNR "
                    "ratio; preprocess.series_filter can leave them out", sigma_methods["wavelet"])
    if sigma_methods.get("none"):
        log.warning("%d series had no measurable noise: the field model added none to them (use "
                    "degrade.model=gaussian for noise-free data)", sigma_methods["none"])
    if skips.series.get(OTHER_FIELD_REASON):
        log.warning("%d series were acquired at another field strength than degrade.source_field_t = %s T and were "
                    "left out: simulated from there they would be no %s T pair (set degrade.source_field_t to use "
                    "them)", skips.series[OTHER_FIELD_REASON], cfg["degrade"]["source_field_t"],
                    cfg["degrade"]["target_field_t"])
    return summary


# The field model scales the noise from degrade.source_field_t to target_field_t: a series acquired at another field
# (a 1.5T scan in a 3T cohort) would be degraded to about 0.75 T and then serve as a 3T target.
OTHER_FIELD_REASON = "acquired at another field strength than degrade.source_field_t"
FIELD_TOLERANCE_T = 0.25


def _other_field(series, cfg, skips):
    """Whether the field model must leave `series` out (OTHER_FIELD_REASON, counted in skips): its
    MagneticFieldStrength is stated and more than FIELD_TOLERANCE_T from degrade.source_field_t."""
    field_t = series.field_strength_t
    if cfg["degrade"]["model"] != "field" or not field_t \
            or abs(field_t - float(cfg["degrade"]["source_field_t"])) <= FIELD_TOLERANCE_T:
        return False
    skips.add_series(OTHER_FIELD_REASON, series.n_files, f"{series.series_description}: {field_t} T")
    return True


def _format_counts(counter):
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(counter.items()))


def _log_skips(skips):
    """One warning line per reason, with one example, instead of one line per file."""
    for reason, n in sorted(skips.files.items()):
        what = f"{n} file{'s' if n != 1 else ''}"
        if skips.series.get(reason):
            what += f" ({skips.series[reason]} series)"
        log.warning("skipped %s: %s (e.g. %s)", what, reason, skips.examples.get(reason, ""))


def benchmark(dicom_root, cfg, workers=1, out_dir=None):
    """Preprocess `dicom_root` into a fresh temporary folder (inside out_dir if given, so the disk is the one
    you will use) and report throughput and peak memory. Peak RSS is ru_maxrss of this process and of the
    largest finished child (the workers), in MiB; it should not grow with the number of series."""
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="benchmark-", dir=out_dir) as tmp:
        summary = run(dicom_root, Path(tmp), cfg, workers=workers, progress=False)
    to_mib = 1 / 1024  # ru_maxrss is in KiB on Linux
    return {
        "slices": summary["slices"], "series": summary["series_used"], "workers": workers,
        "image_size": cfg["preprocess"]["image_size"], "dtype": cfg["preprocess"]["dtype"],
        "seconds": summary["seconds"], "seconds_index": summary["seconds_index"],
        "slices_per_s": round(summary["slices"] / summary["seconds"], 1),
        "slices_per_s_processing": round(summary["slices"] / max(summary["seconds_process"], 1e-9), 1),
        "peak_rss_mib_self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mib, 1),
        "peak_rss_mib_workers": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * to_mib, 1),
    }


def demo_root(cfg):
    """The embedded demo tree (generated once by demo_data.py, reused afterwards)."""
    from breastmri.simulate import demo_tree

    demo = cfg["demo"]
    return demo_tree.ensure_demo_tree(demo["out"], patients=demo["patients"], seed=demo["seed"],
                                      slices=demo["slices"], time_points=demo["time_points"],
                                      matrix=demo["matrix"], texture_beta=demo["texture_beta"],
                                      motion_mm=demo["motion_mm"], kspace=demo["kspace"])
