"""Enhance MR series with a trained model: DICOM in, a new derived DICOM series out, at the native matrix.

    python enhance.py --model runs/unet --input data/demo_dicom --output enhanced
    python enhance.py --model runs/unet/model.keras --input path/to/series_dir --output enhanced --preview
    python enhance.py ... [--batch-size 8] [--tile 256 --force-tiling] [--overwrite]

--model is a run dir of main.py (or its model.keras); the config.yaml saved next to model.keras decides the
normalization (preprocess.norm_percentiles) and, for the thesis autoencoder, the input size, so no training
setting is repeated here. --input is one DICOM file, a series folder or a whole tree: it is indexed with
preprocessing.index under the run's own preprocess.series_filter and preprocess.include_kinds, so exactly the
series preprocessing would have used are enhanced: magnitude MR images. Everything else is skipped with a counted
reason: non-MR objects, phase / real / imaginary images, parametric maps, localizers, subtractions, projections
(mr_kinds.image_kinds), series the filter leaves out, and every object enhance.py wrote itself
(mr_kinds.written_by_enhance), so a tree that holds earlier outputs is never enhanced twice.

Output layout (--output DIR):

    DIR/<PatientID>/<StudyInstanceUID>/<new SeriesInstanceUID>/0001.dcm ...   one file per input file
    DIR/<PatientID>/<StudyInstanceUID>/<new SeriesInstanceUID>/enhance.json  marker: source series, model, hashes
    DIR/<PatientID>/<StudyInstanceUID>/<new SeriesInstanceUID>.png           --preview: original | enhanced | diff
    DIR/enhance_summary.json    series done and skipped (with reasons), slices, seconds, ms per slice, model

What happens to each series, and why:
1. read_series gives modality values (RescaleSlope/Intercept applied, per frame for enhanced MR);
   robust_range of the series maps its norm_percentiles to 0 and 1, exactly as preprocessing did for training.
2. Size. The U-Net is fully convolutional: the stack is reflect-padded to a multiple of 2**depth and the output
   cropped back, so a 192x192 or 70x45 scan is enhanced at its own matrix (no resampling, no interpolation blur).
   The thesis autoencoder only takes S x S (S = preprocess.image_size): slices are padded to a square and resized
   with grid.resize_square, and the output is mapped back with unresize_square, as in training.
   Slices whose padded size exceeds a pixel budget (MAX_PIXELS, --max-pixels; or all, with --force-tiling) go
   through the network in tiles of --tile pixels whose centres are kept; the overlap on each side is the U-Net's
   receptive radius (receptive_margin: 24 px at depth 2, 56 px at depth 3), so tiled output equals whole-image
   output to float32 rounding (predict_tiled).
3. The output is mapped back to the stored values (dicom_writer.py): undo the normalization, undo the rescale of each frame,
   round, clip to the range BitsStored allows (signed or unsigned per PixelRepresentation), same integer type.
4. Each output file (dicom_writer.write_series) is the input file's header with: new SeriesInstanceUID and SOPInstanceUIDs, SeriesNumber
   + 1000 (moved up past any number already used in the study: output_series_numbers), SeriesDescription
   + " enhanced", ContentDate/Time and InstanceCreationDate/Time of the enhancement, a ContributingEquipmentSequence
   item naming enhance.py, the model's sha256 and config hash, and a private block (creator "mri-enhance", group
   0071) that marks the object as enhance.py's output for any later indexing (mr_kinds.written_by_enhance).
   Classic MR: ImageType DERIVED\\SECONDARY (further values kept), DerivationDescription, DerivationCodeSequence
   (CID 7203 "Smoothing") and a SourceImageSequence.
   Enhanced and legacy converted MR (PS3.3 A.36 / A.71): ImageType and FrameType DERIVED\\PRIMARY (value 2 may
   only be PRIMARY there), the MR Pulse Sequence attributes removed (they belong to ORIGINAL images), empty
   Enhanced General Equipment values filled, and each frame's DerivationImageSequence naming its source frame,
   with a SourceImageEvidenceSequence. Study, patient, geometry (ImagePositionPatient, ImageOrientationPatient,
   PixelSpacing, SliceThickness, FrameOfReferenceUID, per-frame functional groups), SOP class, bit depth tags and
   WindowCenter/Width are kept: the output is in the input's units. PixelPaddingValue (and
   PixelPaddingRangeLimit) pixels are left out of the normalization, written back as padding, and no tissue
   pixel is given a padding value. Pixel data is written uncompressed, explicit VR little endian, whatever the
   input transfer syntax. tests/test_dciodvfy.py checks that dciodvfy finds no error the source did not have.

Choices:
- Multi-frame (enhanced MR) input gives multi-frame output: one output object per input object, frames in the
  stored order, per-frame functional groups (geometry, rescale, timing) untouched. Splitting into classic single
  frames would have to rewrite those groups as classic tags, which loses information.
- UIDs: root 2.25 (UUID-derived, PS3.5 B.2; needs no registered organizational root): '2.25.' + the decimal
  value of a name-based UUID (RFC 4122 version 5) of the inputs below (derived_uid; pydicom's
  generate_uid(prefix=None, entropy_srcs=...) would be random, see there). The SeriesInstanceUID is deterministic
  from (source SeriesInstanceUID, model config hash, model file sha256, the source SOPInstanceUIDs), so a re-run
  on the same input with the same model maps to the same folder, which is then reported as "exists" and left
  alone unless --overwrite. The source SOPInstanceUIDs are part of it so that enhancing two parts of one series
  (one file, then the folder) gives two distinct series; the model sha256 so that a model retrained with the same
  config is not mistaken for the old one. SOPInstanceUIDs derive from (new series UID, source SOPInstanceUID).
- A series is written into DIR/.tmp-enhance-<pid>-<uid>/ and renamed into place when complete, so a failing
  series (unreadable pixels, a write error) leaves nothing behind; it is counted in the summary with its reason.
  Run one enhance.py per output folder at a time.
"""

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

import preprocessing
from config import ConfigError, config_hash, load_run_config
from context import context_stack
from grid import resize_square, unresize_square
from mr_kinds import check_include_kinds
# Writing the output series (steps 3 and 4 above) is dicom_writer.py's job; these names are its interface here, and
# the ones tests reach through enhance.
from dicom_writer import (  # noqa: F401
    DERIVATION_SMOOTHING, ENHANCED_EQUIPMENT_TAGS, PULSE_SEQUENCE_TAGS, SOFTWARE_NAME, derived_series_uid,
    keep_padding, output_series_numbers, padding_mask, series_folder, stored_range, to_stored, write_series)

# Pixels per forward pass (batch x padded H x W). The default U-Net keeps roughly 200 float32 activations per
# pixel alive across its levels (~0.8 kB), so 2**21 pixels (8 slices of 512 x 512) stay around 1.7 GB. A single
# slice above the budget (e.g. a 2048 x 2048 matrix) is tiled; MR matrices (<= 1024) never need it.
MAX_PIXELS = 2**21
DEFAULT_TILE = 512
MARKER = "enhance.json"
SUMMARY = "enhance_summary.json"
TMP_PREFIX = ".tmp-enhance-"


class EnhanceError(Exception):
    """Bad command-line input (missing model or input, unusable option); the CLI prints it on one line, exit 2."""


# One series cannot be enhanced: the same exception preprocessing skips a series with; its `reason` is the short
# counted reason in the summary.
SeriesError = preprocessing.SeriesReadError
# An exception no check foresaw: its series is skipped and counted, the run goes on, and it exits with status 1.
UNFORESEEN_REASON = "enhance failed"


@dataclass
class Enhancer:
    """A loaded model and everything about it that decides how it is applied and how outputs are labelled."""

    model: object
    cfg: dict
    model_path: Path
    config_hash: str
    model_sha: str   # sha256 of model.keras, first 12 hex digits
    name: str        # cfg["model"]["name"]
    multiple: int    # input sides must be multiples of this (model.size_multiple)
    margin: int      # tile overlap on each side, pixels (receptive_margin); 0 for the thesis autoencoder
    timings: list = field(default_factory=list)  # seconds of every forward pass, for ms per slice

    @property
    def context(self):
        """(channel offsets, pre-contrast frames, projection) the model was trained with (model.context_offsets)."""
        from model import context_offsets

        return context_offsets(self.cfg)

    @property
    def size_handling(self):
        size = self.cfg["preprocess"]["image_size"]
        if size is None:
            return (f"native matrix, as in training (preprocess.image_size null): reflect-padded to a multiple of "
                    f"{self.multiple} (2**depth) and cropped back; tiles (when used) overlap by {self.margin} px, "
                    "the U-Net's receptive radius")
        return (f"resized, as in training: padded to a square and resized to {size}x{size} (the run's "
                f"preprocess.image_size) with grid.resize_square, mapped back with unresize_square")


# --------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------

def resolve_model(path):
    """(model.keras, config.yaml) from a run dir or a model file; EnhanceError when either is missing."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise EnhanceError(f"--model {path} does not exist; give a run dir of main.py or its model.keras")
    config_file = path.parent / "config.yaml"
    if not config_file.is_file():
        raise EnhanceError(f"{config_file} does not exist; the model's config (written by main.py next to "
                           f"model.keras) decides its normalization and input size")
    return path, config_file


def receptive_margin(depth):
    """Pixels of context a U-Net output pixel depends on, on each side, rounded up to a multiple of 2**depth.

    Per level l (1..depth) the encoder's two 3x3 convs add 2 * 2**(l-1), its 2x2 pool 2**(l-1); the bottleneck's
    convs add 2 * 2**depth; the decoder's convs again 2 * 2**(l-1) (a stride-2 2x2 transposed conv reads one
    coarse pixel and adds nothing). Sum: 7 * 2**depth - 5 (23 px for depth 2, 51 for depth 3). Rounding up keeps
    tile origins on the pooling grid, which a U-Net needs to be shift-equivariant.
    """
    multiple = 2**depth
    return math.ceil((7 * multiple - 5) / multiple) * multiple


def load_enhancer(path):
    """Load model.keras (compile=False) with the custom objects of main.py registered, and its config."""
    model_path, config_file = resolve_model(path)
    try:
        cfg = load_run_config(config_file)
    except ConfigError as error:
        raise EnhanceError(f"{config_file}: {error}") from None
    import tensorflow as tf

    import main
    from model import size_multiple

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialized (e.g. a second load in one process): keep what is set
            pass
    try:
        model = main.load_model(model_path)
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file: say which, in one line
        raise EnhanceError(f"cannot load {model_path}: {type(error).__name__}: {error}") from None
    name = cfg["model"]["name"]
    multiple = size_multiple(cfg)
    return Enhancer(model=model, cfg=cfg, model_path=model_path.resolve(), config_hash=config_hash(cfg),
                    model_sha=hashlib.sha256(model_path.read_bytes()).hexdigest()[:12], name=name,
                    multiple=multiple,
                    margin=receptive_margin(int(cfg["model"]["depth"])) if name == "unet" else 0)


# --------------------------------------------------------------------------------------------------------------
# Prediction on normalized stacks
# --------------------------------------------------------------------------------------------------------------

def _forward(model, batch, timings=None):
    """One forward pass: float32 (B, h, w) or (B, h, w, C) -> float32 (B, h, w).

    predict_on_batch runs Keras' traced predict function (traced with reduce_retracing, so new slice sizes stop
    costing a retrace after the first few); on CPU it is ~1.5x faster than an eager model(x) call."""
    start = time.perf_counter()
    batch = batch[..., None] if batch.ndim == 3 else batch  # (B, h, w) one channel, or (B, h, w, C) with context
    out = np.asarray(model.predict_on_batch(batch), dtype=np.float32)[..., 0]
    if len(out) != len(batch):  # a model built under MirroredStrategy returns every replica's copy: call it
        out = np.asarray(model(batch, training=False), dtype=np.float32)[..., 0]
    if timings is not None:
        timings.append(time.perf_counter() - start)
    return out


def _forward_batched(model, images, batch_size, timings=None):
    out = np.empty(images.shape[:3], np.float32)
    for start in range(0, len(images), batch_size):
        out[start:start + batch_size] = _forward(model, images[start:start + batch_size], timings)
    return out


def tile_windows(length, tile, margin):
    """Windows along one axis: [(window_start, core_start, core_end)], windows of length min(tile, length).

    The cores (tile - 2 * margin long) cover [0, length) without overlap. Each window is the core widened by
    `margin` on both sides and shifted back inside the image at the borders, so every core pixel has `margin`
    pixels of real context on each side or sits at the image border, where the whole image has the same border
    (zero padding of the 'same' convolutions) as the tile. length, tile and margin are multiples of 2**depth.
    """
    if length <= tile:
        return [(0, 0, length)]
    core = tile - 2 * margin
    windows = []
    for core_start in range(0, length, core):
        core_end = min(core_start + core, length)
        start = min(max(core_start - margin, 0), length - tile)
        windows.append((start, core_start, core_end))
    return windows


def default_tile(multiple, margin):
    """DEFAULT_TILE, or a larger multiple of 2**depth for a U-Net so deep that its margins would fill the tile."""
    return max(DEFAULT_TILE, math.ceil(4 * margin / multiple) * multiple)


def check_tile(tile, multiple, margin):
    """Raise EnhanceError unless a tile side leaves a core of at least one pooling cell inside its margins."""
    if not isinstance(tile, int) or tile % multiple or tile < 2 * margin + multiple:
        smallest = 2 * margin + multiple
        raise EnhanceError(f"--tile {tile}: the tile side must be a multiple of {multiple} (2**depth) and at least "
                           f"{smallest} (2 x the {margin} px margin + {multiple}); e.g. --tile "
                           f"{max(smallest, 256) if max(smallest, 256) % multiple == 0 else smallest}")


def predict_tiled(model, padded, tile, margin, batch_size=8, timings=None):
    """U-Net output of padded (n, H, W[, C]) float32 computed tile by tile; H, W, tile, margin multiples of 2**depth.

    Each tile of side `tile` is run with `margin` pixels of context around its core and only the core is kept
    (no blending). margin = receptive_margin(depth) covers the whole receptive field, so a core pixel sees
    exactly the values it would see in the whole image: tiled equals untiled up to float32 rounding (measured
    6e-8 for depth 2 and 3; the tests require < 1e-3). Shorter margins leave seams: 2e-3 / 2e-2 / 7e-2 with
    20 / 12 / 4 px at depth 2 (random weights, normalized units).
    """
    n, rows, cols = padded.shape[:3]
    win_r, win_c = tile_windows(rows, tile, margin), tile_windows(cols, tile, margin)
    h, w = min(tile, rows), min(tile, cols)
    places = [(i, r, c) for i in range(n) for r in win_r for c in win_c]
    out = np.empty((n, rows, cols), np.float32)
    for start in range(0, len(places), batch_size):
        chunk = places[start:start + batch_size]
        tiles = np.stack([padded[i, r0:r0 + h, c0:c0 + w] for i, (r0, _, _), (c0, _, _) in chunk])
        pred = _forward(model, tiles, timings)
        for k, (i, (r0, ra, rb), (c0, ca, cb)) in enumerate(chunk):
            out[i, ra:rb, ca:cb] = pred[k, ra - r0:rb - r0, ca - c0:cb - c0]
    return out


def pad_to_multiple(stack, multiple):
    """Reflect-pad (n, H, W[, C]) to sides that are multiples of `multiple`; returns (padded, (top, left))."""
    rows, cols = stack.shape[1:3]
    extra_r, extra_c = -rows % multiple, -cols % multiple
    top, left = extra_r // 2, extra_c // 2
    if not extra_r and not extra_c:
        return stack, (0, 0)
    # Reflection continues the anatomy and noise texture across the border; zeros would be a fake edge.
    pad = [(0, 0), (top, extra_r - top), (left, extra_c - left)] + [(0, 0)] * (stack.ndim - 3)
    return np.pad(stack, pad, mode="reflect" if min(rows, cols) > 1 else "edge"), (top, left)


def predict_padded(model, stack, multiple, batch_size=8, timings=None):
    """Model output for a normalized stack at its own grid: float32 (n, H, W) or, with context channels,
    (n, H, W, C) -> (n, H, W). Reflect-padded to a
    multiple of `multiple` and cropped back. main.py evaluates (and validates) through this very function, so a
    slice enhanced here and the same slice evaluated there see the same pixels."""
    stack = np.ascontiguousarray(stack, dtype=np.float32)
    rows, cols = stack.shape[1:3]
    padded, (top, left) = pad_to_multiple(stack, multiple)
    out = _forward_batched(model, np.ascontiguousarray(padded), batch_size, timings)
    return np.ascontiguousarray(out[:, top:top + rows, left:left + cols])


def predict_stack(enhancer, stack, batch_size=8, tile=None, force_tiling=False, max_pixels=MAX_PIXELS,
                  zero=0.0, layout=None):
    """Model output for a normalized stack of frames, float32 (n, H, W) -> float32 (n, H, W), same normalized
    units.

    On the grid the model was trained on. preprocess.image_size null (the U-Net default): the scan's own matrix,
    reflect-padded to a multiple of 2**depth and cropped back (predict_padded); tiled when the padded slice has more
    than max_pixels pixels or force_tiling (tile side `tile`, default DEFAULT_TILE). A run trained on resized
    slices (preprocess.image_size S, the thesis): resize_square to S x S (padding with `zero`, the normalized value
    of no signal), exactly as preprocessing did, and unresize_square back.
    A context model (model.context) gets its input stacks built on that grid, by context.context_stack from the
    series' (time point, slice position) `layout`, as training built them from the preprocessed arrays: after the
    resize, so that a projection channel sees the pixels it saw in training.
    Returns (output, info) with info = {"method", "tiled", "tile", "margin", "model_shape"}.
    """
    stack = np.ascontiguousarray(stack, dtype=np.float32)
    n, rows, cols = stack.shape[:3]
    context = enhancer.context

    def inputs(frames):
        if context.single_frame:
            return frames
        return context_stack(frames, layout or [(0, i) for i in range(len(frames))], *context)

    timings = enhancer.timings
    size = enhancer.cfg["preprocess"]["image_size"]
    if size is not None:
        size = int(size)
        per_call = max(1, min(batch_size, max_pixels // (size * size)))
        square = inputs(resize_square(stack, size, pad_value=zero))
        out = predict_padded(enhancer.model, square, enhancer.multiple, per_call, timings)
        return unresize_square(out, (rows, cols)), {
            "method": "resize", "tiled": False, "tile": None, "margin": 0, "model_shape": [size, size]}
    stack = inputs(stack)
    if enhancer.name != "unet":
        raise EnhanceError(f"{enhancer.name} has a fixed input size but its run has no preprocess.image_size")

    padded, _ = pad_to_multiple(stack, enhancer.multiple)
    p_rows, p_cols = padded.shape[1:3]
    tiled = force_tiling or p_rows * p_cols > max_pixels
    if tiled:
        tile = default_tile(enhancer.multiple, enhancer.margin) if tile is None else tile
        check_tile(tile, enhancer.multiple, enhancer.margin)
        per_call = max(1, min(batch_size, max_pixels // (tile * tile)))
        top, left = (p_rows - rows) // 2, (p_cols - cols) // 2
        out = predict_tiled(enhancer.model, padded, tile, enhancer.margin, per_call, timings)
        out = np.ascontiguousarray(out[:, top:top + rows, left:left + cols])
    else:
        per_call = max(1, min(batch_size, max_pixels // (p_rows * p_cols)))
        out = predict_padded(enhancer.model, stack, enhancer.multiple, per_call, timings)
    return out, {"method": "pad", "tiled": bool(tiled), "tile": tile if tiled else None,
                 "margin": enhancer.margin, "model_shape": [int(p_rows), int(p_cols)]}


# --------------------------------------------------------------------------------------------------------------
# One series, atomically
# --------------------------------------------------------------------------------------------------------------

def enhance_series(series, enhancer, out_dir, batch_size=8, tile=None, force_tiling=False, max_pixels=MAX_PIXELS,
                   overwrite=False, preview=False, series_number=None):
    """Enhance one Series into its folder under out_dir. Returns a result dict with "status": "done" or
    "skipped" (+ "reason", "detail"); never raises for bad data (a KeyboardInterrupt still stops the run)."""
    new_uid = derived_series_uid(series, enhancer)
    final = series_folder(out_dir, series, new_uid)
    result = {"source_series_uid": series.series_uid, "series_description": series.series_description,
              "patient_id": series.patient_id, "output_series_uid": new_uid,
              "folder": os.path.relpath(final, out_dir), "slices": len(series.frames),
              "rows": series.rows, "cols": series.cols}
    if final.exists() and not overwrite:
        return dict(result, status="skipped", reason="exists", detail="output series exists; use --overwrite")

    started = time.perf_counter()
    inference_before = sum(enhancer.timings)
    tmp = Path(out_dir) / f"{TMP_PREFIX}{os.getpid()}-{new_uid}"
    old = Path(out_dir) / f"{TMP_PREFIX}{os.getpid()}-old-{new_uid}"
    try:
        try:
            raw = preprocessing.read_series(series)
        except SeriesError:
            raise
        except Exception as error:  # noqa: BLE001 - any decoder failure skips this series only
            raise SeriesError("pixel read failed", f"{type(error).__name__}: {error}") from None
        # Padded pixels (PixelPaddingValue) are not image: they take no part in the normalization, the network
        # sees them as the darkest tissue value (lo) instead of an artificial edge, as in training
        # (preprocessing.image_range), and write_series restores them.
        padding = padding_mask(series, raw)
        lo, hi = preprocessing.image_range(raw, padding, enhancer.cfg["preprocess"]["norm_percentiles"])
        scale = np.float32(hi) - np.float32(lo)
        normalized = (raw - np.float32(lo)) / scale
        if padding is not None:
            normalized[padding] = 0.0
        try:
            # context models: the same stacks PairedSlices gives the network in training, from this series'
            # (time point, slice position) layout
            pred, info = predict_stack(enhancer, normalized, batch_size, tile, force_tiling, max_pixels,
                                       zero=float(-np.float32(lo) / scale), layout=series.layout)
        except EnhanceError:
            raise
        except Exception as error:  # noqa: BLE001 - e.g. out of memory on a huge slice: report, go on
            raise SeriesError("inference failed", f"{type(error).__name__}: {error}") from None
        zero = float(-np.float32(lo) / scale)
        import main

        if main.needs_rician_correction(enhancer.cfg, enhancer.cfg["degrade"]["model"]):
            # a self-supervised run learned E[magnitude]: invert the Rician mean with this series' noise, measured
            # as main.py's evaluation measures it on the same normalized series
            from degrade import series_sigma
            from denoisers import correct_rician_mean

            # padding counts as no signal (it is written back as padding), not as a spike at lo
            measured = normalized if padding is None else np.where(padding, np.float32(zero), normalized)
            pred = correct_rician_mean(pred, series_sigma(measured, zero)[0], zero)
        enhanced = pred.astype(np.float64) * float(scale) + lo

        created = datetime.now()
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            n_files = write_series(series, enhanced, enhancer, tmp, new_uid, created, padding, series_number)
            marker = {"source_series_uid": series.series_uid, "output_series_uid": new_uid,
                      "model": str(enhancer.model_path), "model_sha256": enhancer.model_sha,
                      "config_hash": enhancer.config_hash, "slices": len(series.frames), "files": n_files,
                      "norm_lo": lo, "norm_hi": hi, "size": info, "created": created.isoformat(timespec="seconds")}
            (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")  # written last: the series is complete
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # --overwrite: swap the old series out, the new one in, then delete the old one
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
        except SeriesError:
            raise
        except Exception as error:  # noqa: BLE001 - an unwritable header, a full disk: skip, leave nothing
            raise SeriesError("write failed", f"{type(error).__name__}: {error}") from None
        shutil.rmtree(old, ignore_errors=True)
    except EnhanceError:
        raise
    except Exception as error:  # noqa: BLE001 - a SeriesError, or an unforeseen failure: this series only, counted
        if old.exists() and not final.exists():
            os.replace(old, final)  # the new series failed after the old one was moved away: put it back
        if not isinstance(error, SeriesError):  # where it happened, for the bug report
            where = traceback.extract_tb(error.__traceback__)[-1]
            error = SeriesError(UNFORESEEN_REASON, f"{type(error).__name__}: {error} "
                                                   f"({Path(where.filename).name}:{where.lineno})")
        return dict(result, status="skipped", reason=error.reason, detail=str(error))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if preview:
        try:
            png = save_preview(raw, enhanced, final.parent / f"{final.name}.png",
                               f"{series.patient_id} {series.series_description}")
            result["preview"] = os.path.relpath(png, out_dir)
        except Exception as error:  # noqa: BLE001 - a figure problem must not fail a series already written
            result["preview_error"] = f"{type(error).__name__}: {error}"
    seconds = time.perf_counter() - started
    return dict(result, status="done", files=n_files, norm_lo=lo, norm_hi=hi, size=info,
                seconds=round(seconds, 3), inference_seconds=round(sum(enhancer.timings) - inference_before, 3))


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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------

def collect_series(input_path, out_dir=None, series_filter="", include_kinds=()):
    """(series_list, Skips, files_seen, series_skips list) for a DICOM file, a folder or a tree.

    The same rule as preprocessing (preprocessing.index): series_filter and include_kinds are the run's
    preprocess settings; files enhance.py wrote are skipped as mr_kinds.ENHANCE_OUTPUT_REASON. Skips holds the
    file counts and the series left out while indexing (series filter, mixed planes, mismatched shapes); series
    with files inside out_dir that are not our output (the output folder placed inside the input tree) are in the
    series_skips list, so a second run never enhances anything in its own output folder."""
    input_path = Path(input_path)
    include_kinds = check_include_kinds(include_kinds)
    if input_path.is_file():
        skips = preprocessing.Skips()
        record = preprocessing.scan_file(input_path, include_kinds)
        if isinstance(record, str):
            skips.add_file(record, str(input_path))
            return [], skips, 1, []
        series_list = preprocessing.group_series([record], input_path.parent, skips, include_kinds)
        return preprocessing.filter_series(series_list, series_filter, skips), skips, 1, []
    series_list, skips, files_seen = preprocessing.index(input_path, series_filter, include_kinds)
    kept, skipped = [], []
    out = Path(out_dir).resolve() if out_dir is not None else None
    for s in series_list:
        if out is not None and out in Path(s.frames[0][0]).resolve().parents:
            skipped.append({"source_series_uid": s.series_uid, "series_description": s.series_description,
                            "patient_id": s.patient_id, "slices": len(s.frames), "status": "skipped",
                            "reason": "inside output folder", "detail": "series lies inside --output"})
        else:
            kept.append(s)
    return kept, skips, files_seen, skipped


def _remove_stale_tmp(out_dir):
    """Remove temporary series folders left by runs that were killed (their process no longer exists)."""
    for tmp in Path(out_dir).glob(TMP_PREFIX + "*"):
        pid = tmp.name[len(TMP_PREFIX):].split("-", 1)[0]
        alive = False
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                alive = True
            except ProcessLookupError:
                alive = False
            except PermissionError:  # exists, owned by someone else
                alive = True
        if alive:
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


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
    if not isinstance(batch_size, int) or batch_size < 1:
        raise EnhanceError(f"--batch-size {batch_size}: give an integer >= 1")
    enhancer = model if isinstance(model, Enhancer) else load_enhancer(model)
    if tile is not None and enhancer.name == "unet":
        check_tile(tile, enhancer.multiple, enhancer.margin)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out_dir)

    pre = enhancer.cfg["preprocess"]
    try:
        series_list, skips, files_seen, results = collect_series(input_path, out_dir, pre["series_filter"],
                                                                 pre["include_kinds"])
    except ConfigError as error:
        raise EnhanceError(f"{enhancer.model_path.parent / 'config.yaml'}: {error}") from None
    file_skips = skips.files
    n_slices = sum(len(s.frames) for s in series_list)
    print(f"enhance: {len(series_list)} MR series ({n_slices} slices) in {files_seen} files under {input_path}; "
          f"model {enhancer.name} ({enhancer.model_path}, config {enhancer.config_hash})")
    inference_before = sum(enhancer.timings)
    bar = tqdm(total=n_slices, unit="slice", desc="enhance", disable=not progress or not n_slices)
    series_numbers = output_series_numbers(series_list)
    for s in series_list:
        results.append(enhance_series(s, enhancer, out_dir, batch_size, tile, force_tiling, max_pixels,
                                      overwrite, preview, series_numbers[s.series_uid]))
        bar.update(len(s.frames))
    bar.close()

    done = [r for r in results if r["status"] == "done"]
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
    tmp = out_dir / f"{TMP_PREFIX}{os.getpid()}-{SUMMARY}"
    tmp.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    os.replace(tmp, out_dir / SUMMARY)
    skipped = ", ".join(f"{reason}: {n}" for reason, n in summary["series_skipped"].items()) or "none"
    speed = f" ({summary['ms_per_slice']} ms/slice inference)" if slices else ""
    print(f"enhanced {len(done)} series, {slices} slices in {seconds:.1f} s{speed}; series skipped: {skipped}; "
          f"files skipped: {sum(file_skips.values())} -> {out_dir / SUMMARY}")
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="run dir of main.py (with model.keras + config.yaml) or model.keras")
    p.add_argument("--input", required=True, help="a DICOM file, a series folder or a whole DICOM tree")
    p.add_argument("--output", required=True, help="folder for the derived series and enhance_summary.json")
    p.add_argument("--batch-size", type=int, default=8, help="slices (or tiles) per forward pass (default 8)")
    p.add_argument("--preview", action="store_true", help="write a PNG per series: original | enhanced | difference")
    p.add_argument("--overwrite", action="store_true", help="replace derived series that already exist")
    p.add_argument("--tile", type=int, default=None,
                   help=f"tile side in pixels when tiling (default {DEFAULT_TILE}); tiles overlap by the U-Net's "
                        "receptive radius")
    p.add_argument("--force-tiling", action="store_true",
                   help=f"tile every slice (default: only slices above {MAX_PIXELS} pixels)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"pixels per forward pass, batch x H x W (default {MAX_PIXELS})")
    args = p.parse_args(argv)
    try:
        resolve_model(args.model)  # fail fast, before TensorFlow is imported
        if not Path(args.input).exists():
            raise EnhanceError(f"--input {args.input} does not exist")
        if args.max_pixels < 1:
            raise EnhanceError(f"--max-pixels {args.max_pixels}: give a positive number")
        summary = run(args.model, args.input, args.output, batch_size=args.batch_size, preview=args.preview,
                      overwrite=args.overwrite, tile=args.tile, force_tiling=args.force_tiling,
                      max_pixels=args.max_pixels)
    except EnhanceError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    failed = summary["series_skipped"].get(UNFORESEEN_REASON, 0)
    if failed:  # the other series are written, but a bug must not pass for a clean run (exit status 1)
        print(f"error: {failed} series failed in a way enhance.py does not foresee ({UNFORESEEN_REASON}); "
              "the exception of each is in enhance_summary.json", file=sys.stderr)
        sys.exit(1)
    return summary


if __name__ == "__main__":
    main()
