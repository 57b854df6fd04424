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
(preprocessing.image_kinds), series the filter leaves out, and every object enhance.py wrote itself
(preprocessing.written_by_enhance), so a tree that holds earlier outputs is never enhanced twice.

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
   with preprocessing.resize_square, and the output is mapped back with unresize_square, as in training.
   Slices whose padded size exceeds a pixel budget (MAX_PIXELS, --max-pixels; or all, with --force-tiling) go
   through the network in tiles of --tile pixels whose centres are kept; the overlap on each side is the U-Net's
   receptive radius (receptive_margin: 24 px at depth 2, 56 px at depth 3), so tiled output equals whole-image
   output to float32 rounding (predict_tiled).
3. The output is mapped back to the stored values: undo the normalization, undo the rescale of each frame,
   round, clip to the range BitsStored allows (signed or unsigned per PixelRepresentation), same integer type.
4. Each output file is the input file's header with: new SeriesInstanceUID and SOPInstanceUIDs, SeriesNumber
   + 1000 (moved up past any number already used in the study: output_series_numbers), SeriesDescription
   + " enhanced", ContentDate/Time and InstanceCreationDate/Time of the enhancement, a ContributingEquipmentSequence
   item naming enhance.py, the model's sha256 and config hash, and a private block (creator "mri-enhance", group
   0071) that marks the object as enhance.py's output for any later indexing (preprocessing.written_by_enhance).
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
import re
import shutil
import sys
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian
from tqdm import tqdm

import preprocessing
from config import ConfigError, config_hash, load_config

SERIES_NUMBER_OFFSET = 1000
DESCRIPTION_SUFFIX = " enhanced"
# Pixels per forward pass (batch x padded H x W). The default U-Net keeps roughly 200 float32 activations per
# pixel alive across its levels (~0.8 kB), so 2**21 pixels (8 slices of 512 x 512) stay around 1.7 GB. A single
# slice above the budget (e.g. a 2048 x 2048 matrix) is tiled; MR matrices (<= 1024) never need it.
MAX_PIXELS = 2**21
DEFAULT_TILE = 512
MARKER = "enhance.json"
SUMMARY = "enhance_summary.json"
TMP_PREFIX = ".tmp-enhance-"
UID_SOURCE = "mri-enhance"  # first part of the name of every UID we derive (a namespace of our own)
# PS3.16 CID 7202 "Source Image Purpose of Reference": what the SourceImageSequence items are for.
PURPOSE_SOURCE_IMAGE = ("121322", "DCM", "Source image for image processing operation")
# PS3.16 CID 7203 "Image Derivation": the closest standard code for a denoising network (CID 7203 has no
# "denoising"; "Smoothing" is the operation a noise-reducing filter is coded as).
DERIVATION_SMOOTHING = ("113087", "DCM", "Smoothing")
# PS3.16 CID 7005 "Contributing Equipment Purposes of Reference": how enhance.py is named in the output.
PURPOSE_PROCESSING_EQUIPMENT = ("109102", "DCM", "Processing Equipment")
SOFTWARE_NAME = preprocessing.ENHANCE_SOFTWARE_NAME  # preprocessing.written_by_enhance recognizes it
# SOP classes with functional groups, whose Image Type and Frame Type value 2 must be PRIMARY (PS3.3 C.8.16.1).
ENHANCED_MR_CLASSES = ("1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4")
# MR Pulse Sequence module (PS3.3 C.8.13.4): each attribute is required if Image Type Value 1 is ORIGINAL or MIXED,
# and dciodvfy rejects them in a DERIVED object, so they go when the object becomes DERIVED. (The MR functional group
# macros, C.8.13.5, are "Required if Frame Type Value 1 of this frame is ORIGINAL, may be present otherwise":
# they stay, they still describe how the source frames were acquired.)
PULSE_SEQUENCE_TAGS = (
    "PulseSequenceName", "MRAcquisitionType", "EchoPulseSequence", "MultipleSpinEcho", "MultiPlanarExcitation",
    "PhaseContrast", "TimeOfFlightContrast", "ArterialSpinLabelingContrast",
    "SteadyStatePulseSequence", "EchoPlanarPulseSequence", "SaturationRecovery", "SpectrallySelectedSuppression",
    "OversamplingPhase", "GeometryOfKSpaceTraversal", "RectilinearPhaseEncodeReordering",
    "SegmentedKSpaceTraversal", "CoverageOfKSpace", "NumberOfKSpaceTrajectories")
# Enhanced General Equipment module (PS3.3 C.7.5.2): Type 1 in enhanced MR objects, often empty in converted or
# anonymized ones. Filled (only where missing or empty) with "UNKNOWN", since we cannot know the scanner's.
ENHANCED_EQUIPMENT_TAGS = ("Manufacturer", "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions")
# Values derived from the pixels of the input; they would be wrong for the output, and readers need none of them.
STALE_TAGS = ("SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
              "LargestPixelValueInSeries", "IconImageSequence", "InstanceCreatorUID", "ExtendedOffsetTable",
              "ExtendedOffsetTableLengths", "PixelDataProviderURL")
# Byte-swapped when the input is big endian (multi-byte binary values pydicom does not convert); UN is dropped.
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


class EnhanceError(Exception):
    """Bad command-line input (missing model or input, unusable option); the CLI prints it on one line, exit 2."""


# One series cannot be enhanced: the same exception preprocessing skips a series with; its `reason` is the short
# counted reason in the summary.
SeriesError = preprocessing.SeriesReadError


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
        """(channel offsets, pre-contrast frames) the model was trained with (model.context_offsets)."""
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
                f"preprocess.image_size) with preprocessing.resize_square, mapped back with unresize_square")


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
        cfg = load_config(config_file)
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
                  zero=0.0):
    """Model output for a normalized stack: float32 (n, H, W), or (n, H, W, C) with context channels (the target
    first) -> float32 (n, H, W), same normalized units.

    On the grid the model was trained on. preprocess.image_size null (the U-Net default): the scan's own matrix,
    reflect-padded to a multiple of 2**depth and cropped back (predict_padded); tiled when the padded slice has more
    than max_pixels pixels or force_tiling (tile side `tile`, default DEFAULT_TILE). A run trained on resized
    slices (preprocess.image_size S, the thesis): resize_square to S x S (padding with `zero`, the normalized value
    of no signal), exactly as preprocessing did, and unresize_square back.
    Returns (output, info) with info = {"method", "tiled", "tile", "margin", "model_shape"}.
    """
    stack = np.ascontiguousarray(stack, dtype=np.float32)
    n, rows, cols = stack.shape[:3]
    timings = enhancer.timings
    size = enhancer.cfg["preprocess"]["image_size"]
    if size is not None:
        size = int(size)
        per_call = max(1, min(batch_size, max_pixels // (size * size)))
        if stack.ndim == 3:
            square = preprocessing.resize_square(stack, size, pad_value=zero)
        else:  # context channels: each resized as preprocessing resized its frame
            square = np.stack([preprocessing.resize_square(stack[..., c], size, pad_value=zero)
                               for c in range(stack.shape[-1])], axis=-1)
        out = predict_padded(enhancer.model, square, enhancer.multiple, per_call, timings)
        return preprocessing.unresize_square(out, (rows, cols)), {
            "method": "resize", "tiled": False, "tile": None, "margin": 0, "model_shape": [size, size]}
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
# Back to stored values
# --------------------------------------------------------------------------------------------------------------

def stored_dtype(bits_allocated, signed):
    """Little-endian numpy dtype of the pixel cells: (u)int8, (u)int16 or (u)int32."""
    if bits_allocated not in (8, 16, 32):
        raise SeriesError("unsupported pixel format", f"BitsAllocated {bits_allocated}")
    return np.dtype(f"<{'i' if signed else 'u'}{bits_allocated // 8}")


def stored_range(bits_stored, signed):
    """(lowest, highest) value BitsStored bits can hold: two's complement when signed (PixelRepresentation 1)."""
    if signed:
        return -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    return 0, 2**bits_stored - 1


def to_stored(modality, slopes, intercepts, bits_stored, bits_allocated, signed):
    """Modality values (n, H, W) -> stored integers: (value - intercept) / slope per frame, rounded to the
    nearest integer, clipped to the BitsStored range, in the pixel cell dtype."""
    slopes = np.asarray(slopes, dtype=np.float64)[:, None, None]
    intercepts = np.asarray(intercepts, dtype=np.float64)[:, None, None]
    if np.any(slopes == 0) or not np.all(np.isfinite(slopes)):
        raise SeriesError("invalid rescale", "RescaleSlope is 0 or not finite")
    values = np.rint((np.asarray(modality, dtype=np.float64) - intercepts) / slopes)
    low, high = stored_range(bits_stored, signed)
    values = np.clip(np.nan_to_num(values, nan=0.0), low, high)
    return values.astype(stored_dtype(bits_allocated, signed))


# --------------------------------------------------------------------------------------------------------------
# DICOM output
# --------------------------------------------------------------------------------------------------------------

def derived_uid(*parts):
    """Deterministic '2.25.<decimal UUID>' UID (PS3.5 B.2) from a name-based UUID (RFC 4122 version 5, SHA-1)
    of the parts. Not pydicom's generate_uid(prefix=None, entropy_srcs=...): pydicom 3.0 ignores entropy_srcs
    when prefix is None and returns a random UUID4, which a re-run could never reproduce."""
    name = "\\".join([UID_SOURCE] + [str(p) for p in parts])
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}")


def derived_series_uid(series, enhancer):
    """UID of the enhanced series: from the source series UID, the model's config hash and file sha256, and the
    source SOPInstanceUIDs (see the module docstring)."""
    sops = hashlib.sha256("\\".join(sorted(series.sop_instance_uids)).encode()).hexdigest()
    return derived_uid(series.series_uid, enhancer.config_hash, enhancer.model_sha, sops)


def _folder_name(text, fallback):
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")[:64] or fallback


def series_folder(out_dir, series, new_uid):
    return Path(out_dir) / _folder_name(series.patient_id, "unknown-patient") / \
        _folder_name(series.study_uid, "unknown-study") / new_uid


def _portable_copy(ds, swap=False):
    """A plain Dataset with every element of `ds` decoded (no raw bytes tied to the input's transfer syntax), so
    it can be written as explicit VR little endian. swap: the input was big endian; multi-byte binary values
    (OW, OF, ...) are byte-swapped, UN values (of unknown structure) are dropped."""
    out = Dataset()
    for elem in ds:
        if elem.VR == "SQ":
            out.add(DataElement(elem.tag, "SQ", Sequence([_portable_copy(item, swap) for item in elem.value])))
            continue
        value = elem.value
        if swap and elem.VR == "UN":
            continue
        if swap and elem.VR in _SWAP_WIDTH and isinstance(value, bytes) and len(value) % _SWAP_WIDTH[elem.VR] == 0:
            value = np.frombuffer(value, dtype=f">u{_SWAP_WIDTH[elem.VR]}").astype(
                f"<u{_SWAP_WIDTH[elem.VR]}").tobytes()
        out.add(DataElement(elem.tag, elem.VR, value))
    return out


def _image_type(value, enhanced=False):
    """DERIVED\\SECONDARY followed by the original values after the first two (e.g. M\\FFE); DERIVED\\PRIMARY
    for enhanced MR objects, whose value 2 may only be PRIMARY (PS3.3 C.8.16.1)."""
    if value is None:
        original = []
    elif isinstance(value, str):
        original = [value]
    else:
        original = list(value)
    return ["DERIVED", "PRIMARY" if enhanced else "SECONDARY"] + [str(v) for v in original[2:]]


def _functional_groups(ds):
    """The shared item(s) and then the per-frame items of an enhanced object (empty for classic images)."""
    return list(ds.get("SharedFunctionalGroupsSequence") or []) + list(ds.get("PerFrameFunctionalGroupsSequence")
                                                                      or [])


def _mark_frame_types(ds):
    """Enhanced MR: FrameType (in MRImageFrameTypeSequence, shared or per frame) becomes DERIVED\\PRIMARY too, as
    its first values must agree with ImageType (PS3.3 C.8.16.1)."""
    for group in _functional_groups(ds):
        for item in group.get("MRImageFrameTypeSequence") or []:
            if "FrameType" in item:
                item.FrameType = _image_type(item.FrameType, enhanced=True)


def _code_item(value, scheme, meaning):
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _source_reference(source_class, source_sop, frame_number):
    """One item of a SourceImageSequence (Image SOP Instance Reference macro, PS3.3 C.10.5, with the purpose of
    reference from CID 7202)."""
    item = Dataset()
    item.ReferencedSOPClassUID = source_class
    item.ReferencedSOPInstanceUID = source_sop
    if frame_number is not None:
        item.ReferencedFrameNumber = frame_number
    item.PurposeOfReferenceCodeSequence = Sequence([_code_item(*PURPOSE_SOURCE_IMAGE)])
    return item


def _add_derivation_per_frame(ds, source_class, source_sop, frame_numbers, description):
    """Enhanced MR: the Derivation Image functional group (PS3.3 C.7.6.16.2.6) in each frame's item: how the frame
    was derived (DerivationCodeSequence, CID 7203) and from which source frame (SourceImageSequence). The Enhanced
    MR IODs define no top-level SourceImageSequence; a reference there is invisible to readers of the IOD."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != len(frame_numbers):
        per_frame = Sequence([Dataset() for _ in frame_numbers])
        ds.PerFrameFunctionalGroupsSequence = per_frame
    for group in ds.get("SharedFunctionalGroupsSequence") or []:
        if "DerivationImageSequence" in group:  # the source's own derivation is per frame from now on
            del group.DerivationImageSequence
    for item, number in zip(per_frame, frame_numbers):
        derivation = Dataset()
        derivation.DerivationDescription = description
        derivation.DerivationCodeSequence = Sequence([_code_item(*DERIVATION_SMOOTHING)])
        derivation.SourceImageSequence = Sequence([_source_reference(source_class, source_sop, number)])
        item.DerivationImageSequence = Sequence([derivation])


def _source_evidence(header, source_class, source_sop):
    """SourceImageEvidenceSequence (MR Image and Spectroscopy Instance macro, PS3.3 C.8.13.2; required once a
    Derivation Image functional group references a source): the source object by study, series and instance
    (Hierarchical SOP Instance Reference macro, PS3.3 C.17.2.1)."""
    instance = Dataset()
    instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = source_class, source_sop
    series = Dataset()
    series.SeriesInstanceUID = str(header.get("SeriesInstanceUID", ""))
    series.ReferencedSOPSequence = Sequence([instance])
    study = Dataset()
    study.StudyInstanceUID = str(header.get("StudyInstanceUID", ""))
    study.ReferencedSeriesSequence = Sequence([series])
    return Sequence([study])


def _complete_dimensions(ds):
    """Multi-frame Dimension module (PS3.3 C.7.6.17): DimensionOrganizationSequence (Type 1) lists every
    DimensionOrganizationUID the DimensionIndexSequence uses; some sources have the index but not the list."""
    index = ds.get("DimensionIndexSequence") or []
    uids = [str(i.DimensionOrganizationUID) for i in index if i.get("DimensionOrganizationUID")]
    if ds.get("DimensionOrganizationSequence") or not uids:
        return
    organizations = []
    for value in dict.fromkeys(uids):
        item = Dataset()
        item.DimensionOrganizationUID = value
        organizations.append(item)
    ds.DimensionOrganizationSequence = Sequence(organizations)


def _contributing_equipment(enhancer, created):
    """SOP Common ContributingEquipmentSequence item (PS3.3 C.12.1) naming enhance.py as processing equipment;
    the General Equipment attributes keep describing the scanner that acquired the source."""
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = Sequence([_code_item(*PURPOSE_PROCESSING_EQUIPMENT)])
    item.Manufacturer = SOFTWARE_NAME
    item.ManufacturerModelName = f"{enhancer.name} {enhancer.model_path.name}"[:64]
    item.SoftwareVersions = f"model sha256 {enhancer.model_sha} config {enhancer.config_hash}"[:64]
    item.ContributionDateTime = created.strftime("%Y%m%d%H%M%S")
    item.ContributionDescription = "Denoised by a trained network; pixel values replaced, geometry kept"
    return item


def _mark_own_output(ds, enhancer):
    """A private block (PS3.5 7.8.1) saying that enhance.py wrote this object, so that preprocessing and a later
    enhance.py skip it (preprocessing.written_by_enhance); free of the standard attributes an anonymizer rewrites."""
    block = ds.private_block(preprocessing.ENHANCE_PRIVATE_GROUP, preprocessing.ENHANCE_PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", "enhance.py output")
    block.add_new(0x02, "LO", f"model sha256 {enhancer.model_sha} config {enhancer.config_hash}"[:64])


def derived_dataset(header, pixels, new_series_uid, frame_numbers, enhancer, created, series_number=None):
    """The output object for one input file.

    header: the input's dataset without pixel data (dcmread stop_before_pixels). pixels: stored values, (rows,
    cols) or (frames, rows, cols) in the cell dtype. frame_numbers: 1-based frame numbers for a multi-frame input
    (None for a single frame). series_number: the output SeriesNumber (default: the source's + 1000).
    Returns a Dataset with file_meta, ready for save_as(enforce_file_format=True).
    """
    big_endian = header.original_encoding[1] is False
    ds = _portable_copy(header, swap=big_endian)
    source_sop = str(header.get("SOPInstanceUID", ""))
    meta = getattr(header, "file_meta", None) or {}
    source_class = str(header.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", ""))
    enhanced = source_class in ENHANCED_MR_CLASSES or "PerFrameFunctionalGroupsSequence" in header
    sop_uid = derived_uid(new_series_uid, source_sop)
    for keyword in STALE_TAGS:
        if keyword in ds:
            delattr(ds, keyword)

    ds.SOPInstanceUID = sop_uid
    ds.SOPClassUID = source_class  # same IOD as the input: viewers treat the output like the source
    ds.SeriesInstanceUID = new_series_uid
    ds.SeriesNumber = (int(header.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET if series_number is None
                       else series_number)
    description = str(header.get("SeriesDescription", "") or "")
    ds.SeriesDescription = description[:64 - len(DESCRIPTION_SUFFIX)] + DESCRIPTION_SUFFIX
    ds.ImageType = _image_type(header.get("ImageType"), enhanced)
    # The pixels are new: the instance and its content date from now (PS3.3 C.12.1 and C.7.6.1 / C.7.6.16).
    date, time_ = created.strftime("%Y%m%d"), created.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time_
    ds.ContentDate, ds.ContentTime = date, time_
    derivation = (
        f"{preprocessing.ENHANCE_DERIVATION_PREFIX} ({enhancer.name}, model file {enhancer.model_path.name} sha256 "
        f"{enhancer.model_sha}, config hash {enhancer.config_hash}); normalization: percentiles "
        f"{list(enhancer.cfg['preprocess']['norm_percentiles'])} of the source series")[:1024]
    equipment = list(ds.get("ContributingEquipmentSequence") or [])
    ds.ContributingEquipmentSequence = Sequence(equipment + [_contributing_equipment(enhancer, created)])
    _mark_own_output(ds, enhancer)
    if enhanced:
        _mark_frame_types(ds)
        for keyword in PULSE_SEQUENCE_TAGS:
            if keyword in ds:
                delattr(ds, keyword)
        for keyword in ENHANCED_EQUIPMENT_TAGS:
            if not str(ds.get(keyword, "") or "").strip():
                setattr(ds, keyword, "UNKNOWN")
        _complete_dimensions(ds)
        for keyword in ("SourceImageSequence", "DerivationDescription", "DerivationCodeSequence"):
            if keyword in ds:  # not in the Enhanced MR IODs: the derivation is told per frame, below
                delattr(ds, keyword)
        _add_derivation_per_frame(ds, source_class, source_sop, frame_numbers or [1], derivation)
        ds.SourceImageEvidenceSequence = _source_evidence(header, source_class, source_sop)
    else:
        # Classic MR: General Image module (PS3.3 C.7.6.1) carries the derivation and the source references.
        ds.DerivationDescription = derivation
        ds.DerivationCodeSequence = Sequence([_code_item(*DERIVATION_SMOOTHING)])
        ds.SourceImageSequence = Sequence([_source_reference(source_class, source_sop, number)
                                           for number in frame_numbers or [None]])

    data = np.ascontiguousarray(pixels).tobytes()
    ds.PixelData = data + (b"\0" if len(data) % 2 else b"")  # values have even length
    ds["PixelData"].VR = "OW" if pixels.dtype.itemsize > 1 else "OB"
    # US-or-SS elements read from implicit VR input (PixelPaddingValue, ...) get their VR from PixelRepresentation.
    correct_ambiguous_vr(ds, is_little_endian=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = source_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def _read_header(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def _pixel_layout(header):
    """(BitsAllocated, BitsStored, signed) of a header, with the checks writing needs."""
    bits_allocated = int(header.get("BitsAllocated") or 16)
    bits_stored = int(header.get("BitsStored") or bits_allocated)
    signed = int(header.get("PixelRepresentation") or 0) == 1
    if "FloatPixelData" in header or "DoubleFloatPixelData" in header:
        raise SeriesError("unsupported pixel format", "float pixel data")
    if not 1 <= bits_stored <= bits_allocated:
        raise SeriesError("unsupported pixel format", f"BitsStored {bits_stored}, BitsAllocated {bits_allocated}")
    stored_dtype(bits_allocated, signed)
    return bits_allocated, bits_stored, signed


def padding_range(header):
    """(low, high, padding value): the stored values that mean "no image here" and the one written for them, or
    None when the header declares no padding.

    PixelPaddingValue (PS3.3 C.7.5.1.1.2) alone: that one value; with PixelPaddingRangeLimit (C.7.6.3.1.11) every
    value between the two, inclusive. Both are stored values (before the rescale), US or SS as PixelRepresentation
    says; read from implicit VR files their VR is ambiguous, so the raw bytes are decoded here when needed."""
    signed = int(header.get("PixelRepresentation") or 0) == 1
    values = []
    for keyword in ("PixelPaddingValue", "PixelPaddingRangeLimit"):
        value = header.get(keyword)
        if isinstance(value, bytes):
            value = int.from_bytes(value[:2], "little", signed=signed) if len(value) >= 2 else None
        if value not in (None, "") and not isinstance(value, (list, tuple)):
            values.append(int(value))
    if not values:
        return None
    return min(values), max(values), values[0]


def padding_mask(series, modality):
    """Boolean (n, H, W): True where the source pixel is padding (see padding_range), or None if no file of the
    series declares padding. modality: the source values (n, H, W) as read_series returns them."""
    mask, headers = None, {}
    for k, (path, _) in enumerate(series.frames):
        if path not in headers:
            headers[path] = padding_range(_read_header(path))
        limits = headers[path]
        if limits is None or series.slopes[k] == 0:
            continue
        stored = np.rint((modality[k].astype(np.float64) - series.intercepts[k]) / series.slopes[k])
        if mask is None:
            mask = np.zeros(modality.shape, dtype=bool)
        mask[k] = (stored >= limits[0]) & (stored <= limits[1])
    return mask


def keep_padding(stored, mask, limits, bits_stored, signed):
    """Stored output values with padding respected: padded pixels (mask) hold PixelPaddingValue, whatever the
    network made of them, and a tissue pixel whose value falls in the padding range is moved to the nearest
    value outside it, so a viewer never hides real tissue as padding (PS3.3 C.7.5.1.1.2)."""
    low, high = stored_range(bits_stored, signed)
    pad_low, pad_high, padding_value = limits
    below, above = pad_low - 1, pad_high + 1
    values = stored.astype(np.int64)
    inside = (values >= pad_low) & (values <= pad_high)
    if mask is not None:
        inside &= ~mask
    if below < low and above > high:
        raise SeriesError("invalid padding", f"padding range {limits} covers every value BitsStored allows")
    nearer_below = (values - pad_low < pad_high - values) if below >= low else np.zeros_like(inside)
    use_below = nearer_below | (above > high)
    values[inside] = np.where(use_below, below, above)[inside]
    if mask is not None:
        values[mask] = padding_value
    return values.astype(stored.dtype)


def write_series(series, modality, enhancer, folder, new_series_uid, created, padding=None, series_number=None):
    """Write one output file per input file of `series` into `folder` (which exists and is empty).

    modality: enhanced values (n, H, W) in series order. padding: boolean (n, H, W) of padded source pixels
    (padding_mask) or None. series_number: the output SeriesNumber (None: the source's + 1000). Files are named
    0001.dcm ... in the order of their first slice in the series. Returns the number of files written."""
    files = {}
    for k, (path, frame) in enumerate(series.frames):
        files.setdefault(path, []).append((k, frame))
    for number, (path, items) in enumerate(files.items(), start=1):
        header = _read_header(path)
        bits_allocated, bits_stored, signed = _pixel_layout(header)
        index = [k for k, _ in items]
        stored = to_stored(modality[index], [series.slopes[k] for k in index],
                           [series.intercepts[k] for k in index], bits_stored, bits_allocated, signed)
        limits = padding_range(header)
        if limits is not None:
            stored = keep_padding(stored, None if padding is None else padding[index], limits, bits_stored, signed)
        n_frames = int(header.get("NumberOfFrames") or 1)
        if n_frames > 1 or items[0][1] is not None:
            order = sorted(range(len(items)), key=lambda j: items[j][1] or 0)
            frames = [items[j][1] or 0 for j in order]
            if frames != list(range(n_frames)):
                raise SeriesError("incomplete multi-frame object", f"{path}: frames {frames} of {n_frames}")
            pixels, frame_numbers = stored[order], [f + 1 for f in frames]
        else:
            pixels, frame_numbers = stored[0], None
        ds = derived_dataset(header, pixels, new_series_uid, frame_numbers, enhancer, created, series_number)
        ds.save_as(folder / f"{number:04d}.dcm", enforce_file_format=True)
    return len(files)


def output_series_numbers(series_list):
    """{source series_uid: output SeriesNumber}: the source's + 1000, moved up past every number already used in
    the same study (by the series of the input tree and by outputs numbered before it), so a viewer never shows
    two series of one study under one number."""
    taken = {}
    for s in series_list:
        taken.setdefault(s.study_uid, set()).add(int(s.series_number or 0))
    numbers = {}
    for s in series_list:
        number = int(s.series_number or 0) + SERIES_NUMBER_OFFSET
        while number in taken[s.study_uid]:
            number += 1
        taken[s.study_uid].add(number)
        numbers[s.series_uid] = number
    return numbers


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
        if not np.all(np.isfinite(raw)):
            raise SeriesError("pixel read failed", "non-finite values after rescale")
        # Padded pixels (PixelPaddingValue) are not image: they take no part in the normalization, the network
        # sees them as the darkest tissue value (lo) instead of an artificial edge, and write_series restores them.
        padding = padding_mask(series, raw)
        lo, hi = preprocessing.robust_range(raw if padding is None else raw[~padding],
                                            enhancer.cfg["preprocess"]["norm_percentiles"])
        if not hi > lo:
            raise SeriesError("constant image", f"lo = hi = {lo}")
        scale = np.float32(hi) - np.float32(lo)
        normalized = (raw - np.float32(lo)) / scale
        if padding is not None:
            normalized[padding] = 0.0
        inputs = normalized
        offsets, precontrast = enhancer.context  # lazy import below: data_factory loads TensorFlow
        if len(offsets) > 1 or precontrast:
            # the same stacks PairedSlices gives the network in training: neighbouring frames of this series by
            # its (time point, slice position) layout, reflected at the ends
            from data_factory import context_stack

            inputs = context_stack(normalized, series.layout or [(0, i) for i in range(len(normalized))],
                                   offsets, precontrast)
        try:
            pred, info = predict_stack(enhancer, inputs, batch_size, tile, force_tiling, max_pixels,
                                       zero=float(-np.float32(lo) / scale))
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
    except SeriesError as error:
        if old.exists() and not final.exists():
            os.replace(old, final)  # the new series failed after the old one was moved away: put it back
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
    preprocess settings; files enhance.py wrote are skipped as preprocessing.ENHANCE_OUTPUT_REASON. Skips holds the
    file counts and the series left out while indexing (series filter, mixed planes, mismatched shapes); series
    with files inside out_dir that are not our output (the output folder placed inside the input tree) are in the
    series_skips list, so a second run never enhances anything in its own output folder."""
    input_path = Path(input_path)
    include_kinds = preprocessing.check_include_kinds(include_kinds)
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
        return run(args.model, args.input, args.output, batch_size=args.batch_size, preview=args.preview,
                   overwrite=args.overwrite, tile=args.tile, force_tiling=args.force_tiling,
                   max_pixels=args.max_pixels)
    except EnhanceError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
