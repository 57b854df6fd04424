"""DICOM tree -> paired (clean, degraded) slice arrays (+ the noise-free truth of demo data) + manifest.csv +
summary.json.

    python preprocessing.py [--dicom-root DIR] [--out DIR] [--config FILE] [--set KEY=VALUE] [--workers N]
    python preprocessing.py --benchmark [--dicom-root DIR] [--workers 2]   # slices/s and peak memory

Without --dicom-root the embedded demo tree is used (demo_data.ensure_demo_tree with cfg["demo"]).

What happens, in order:
1. index_tree: every file's header is read (no pixel data). MR image objects (MR, Enhanced MR, Legacy
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
   noise into correlated blobs).
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

Slice order within a series (slice_index, the first array axis) is by
(temporal position, position along the slice normal, InstanceNumber, file, frame): the temporal position is
TemporalPositionIdentifier (classic MR) or TemporalPositionIndex (enhanced MR); when it is missing and several
images share a slice position (a DCE series without the tag), the images at each position are ranked by
AcquisitionTime (then AcquisitionNumber, InstanceNumber). So a DCE series is stored time point by time point,
each time point as a spatially ordered stack.
"""

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import resource
import struct
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from tqdm import tqdm

from config import ConfigError, config_hash, load_config
from degrade import MODELS, degrade, series_rng, snr_ratio
from demo_data import TRUTH_FILE, TRUTH_INDEX

log = logging.getLogger("preprocessing")

# MR image storage SOP classes we turn into slices (PS3.4 Annex B). Enhanced MR Color, MR Spectroscopy and
# Raw Data are MR too but carry no grayscale image and are skipped with their SOP class as the reason.
MR_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}
MANIFEST_COLUMNS = [
    "patient_id", "study_uid", "series_uid", "series_description", "slice_index", "split", "clean_file",
    "noisy_file", "norm_lo", "norm_hi", "sigma_source", "sigma_added", "snr_ratio", "degrade_model", "rows",
    "cols", "sop_instance_uid", "config_hash", "truth_file", "time_index", "n_times", "position_index",
    "n_positions",
]
# The preprocess keys the arrays depend on (split and series_filter only change which rows are listed
# and how they are split, so changing them does not recompute any array).
ARRAY_PREPROCESS_KEYS = ("image_size", "dtype", "norm_percentiles")
DTYPES = ("float32", "float16")
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}  # Pixel / Float / Double Float Pixel Data
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"UT", b"UC", b"UR", b"SQ", b"SV", b"UV"}
_TMP_PREFIX = ".tmp-"

# --- Which MR images are magnitude anatomy ----------------------------------------------------------------------
# Degradation draws Rician noise, which only a magnitude image has (it rectifies the negative values of a phase,
# real or imaginary image), and the network learns to restore anatomy, not a computed map or a projection. An MR
# image of another kind is skipped with its kind's reason unless preprocess.include_kinds names the kind. DERIVED
# says nothing about the pixels: DERIVED\PRIMARY\M, MPR reformats, DERIVED\SECONDARY\OTHER and trace-weighted
# DWI (Siemens TRACEW) are magnitude images and are kept.
IMAGE_KINDS = ("phase", "real", "imaginary", "parametric_map", "localizer", "subtraction", "projection")
KIND_REASONS = {"phase": "phase image", "real": "real image", "imaginary": "imaginary image",
                "parametric_map": "parametric map", "localizer": "localizer", "subtraction": "subtraction",
                "projection": "projection (MIP)"}
# A series whose images lie in different planes (a three-plane localizer / survey in one series) cannot be one
# stack; counted separately from an image marked LOCALIZER, as it is recognized by geometry, not by a tag.
MIXED_PLANES_REASON = "localizer (image orientations differ)"
ORIENTATION_TOLERANCE = 0.01  # largest difference of direction cosines within one plane (~0.6 degrees)
# Values of ImageType (0008,0008) from value 3 on and of FrameType (0008,9007), normalized by _type_token (upper
# case; spaces, "_" and "-" dropped; "*" spelled STAR). Sources: PS3.3 C.8.3.1.1.1 (MR Image Type value 3: PHASE
# MAP, T1 MAP, T2 MAP, DENSITY MAP, DIFFUSION MAP, VELOCITY MAP, PHASE SUBTRACT, MODULUS SUBTRACT, PROJECTION IMAGE;
# MPR, IMAGE ADDITION and OTHER are kept); C.8.16.1.3/C.8.16.1.4 and C.8.13.1.1.1 (Enhanced MR value 3 flavor
# LOCALIZER, MAX_IP, MIN_IP, METABOLITE_MAP; value 4 derived pixel contrast ADC, DIFFUSION_ANISO, DIFFUSION_ATTNTD,
# T1_MAP, T2_MAP, T2_STAR_MAP, SNR_MAP, TTP, MTT, RCBF, RCBV, T_TEST, Z_SCORE, SUBTRACTION, MAXIMUM, MINIMUM, ...;
# RESAMPLED, ADDITION, MEAN, DIFFUSION are kept); Siemens (M / P / REAL / IMAGINARY at value 3, ADC, EADC, FA,
# TTEST, SUB, MIP_SAG / MIP_COR / MIP_TRA, MNIP); Philips (value 3 PHASE MAP, value 4 M / P / R / I, as in
# ORIGINAL\PRIMARY\PHASE MAP\P\FFE); dcm2niix (phase, real, imaginary from ImageType).
_TYPE_VALUE_KINDS = {
    **dict.fromkeys(("P", "PHASE", "PHASEMAP", "PHASESUBTRACT"), "phase"),
    **dict.fromkeys(("R", "REAL"), "real"),
    **dict.fromkeys(("I", "IMAGINARY"), "imaginary"),
    **dict.fromkeys((
        "ADC", "EADC", "FA", "FRACTIONALANISOTROPY", "DIFFUSIONANISO", "DIFFUSIONATTNTD", "DIFFUSIONMAP",
        "T1MAP", "T2MAP", "T2STARMAP", "R1MAP", "R2MAP", "R2STARMAP", "DENSITYMAP", "PROTONDENSITYMAP", "PDMAP",
        "VELOCITYMAP", "METABOLITEMAP", "SNRMAP", "RHO", "RCOEFFICIENT", "SCM", "TCURVE", "NEI", "TTP", "MTT",
        "RCBF", "RCBV", "CBF", "CBV", "TTEST", "ZSCORE", "STDDEVIATION", "DIVISION"), "parametric_map"),
    **dict.fromkeys(("LOCALIZER", "LOCALISER", "SURVEY", "SCOUT"), "localizer"),
    **dict.fromkeys(("SUB", "SUBTRACT", "SUBTRACTED", "SUBTRACTION", "MODULUSSUBTRACT"), "subtraction"),
    **dict.fromkeys(("MIP", "MAXIP", "MINIP", "MNIP", "MPRMIP", "PROJECTIONIMAGE", "MAXIMUM", "MINIMUM",
                     "VOLUMERENDER", "SURFACERENDER"), "projection"),
}
_PROJECTION_PREFIXES = ("MIP", "MINIP", "MNIP")  # Siemens MIP_SAG, MIP_COR, MIP_TRA, MNIP_...
# ComplexImageComponent (0008,9208), PS3.3 C.8.13.3.1.1 (top level of enhanced objects or per frame in the MR Image
# Frame Type functional group). MAGNITUDE is kept; MIXED sends the check to the frames.
_COMPLEX_KINDS = {"PHASE": "phase", "REAL": "real", "IMAGINARY": "imaginary"}
# VolumeBasedCalculationTechnique (0008,9207), PS3.3 C.8.16.2.1.3: MPR / CURVED_MPR / NONE are kept.
_PROJECTION_TECHNIQUES = {"MAX_IP", "MIN_IP", "VOLUME_RENDER", "SURFACE_RENDER"}
# GE private (0043,xx2F) of GEMS_PARM_01, "Image Type (real, imaginary, phase, magnitude)": 0 magnitude, 1 phase,
# 2 real, 3 imaginary (pydicom's private dictionary; GE marks complex components here, not in ImageType).
_GE_CREATOR, _GE_COMPLEX = "GEMS_PARM_01", {1: "phase", 2: "real", 3: "imaginary"}
# Philips private (2005,xx11) of "Philips MR Imaging DD 001", the PAR/REC image_type_mr code, which classic Philips
# objects also give as ImageType value 4 (ORIGINAL\PRIMARY\M_FFE\M\FFE). Codes M, W, IP, OP, F, T0, ANATOMIC,
# DERIVED are magnitude images and kept; the BreVE breast DCE maps (MAXRELENH ... AREACURV) are parametric.
_PHILIPS_CREATOR = "Philips MR Imaging DD 001"
_PHILIPS_KINDS = {
    "P": "phase", "R": "real", "CR": "real", "I": "imaginary",
    **dict.fromkeys(("T1", "T2", "RHO", "ADC", "EADC", "FA", "RCBV", "RCBF", "MTT", "TTP", "DELAY", "MAXRELENH",
                     "RELENH", "MAXENH", "WASHIN", "WASHOUT", "BREVENH", "AREACURV", "T_TEST", "STD_DEVIATION",
                     "T2_STAR", "R2", "R2_STAR"), "parametric_map"),
}
# What enhance.py writes into every object (enhance.derived_dataset), so that no run indexes its own output as a
# source: a private block (PS3.5 7.8.1) under this creator, a ContributingEquipmentSequence item with this
# Manufacturer, and a DerivationDescription (top level, or per frame for enhanced MR) that starts with this text.
# Any one of them is enough (anonymizers often drop private blocks).
ENHANCE_PRIVATE_CREATOR = "mri-enhance"
ENHANCE_PRIVATE_GROUP = 0x0071
ENHANCE_SOFTWARE_NAME = "mri-enhance enhance.py"
ENHANCE_DERIVATION_PREFIX = "Denoised by enhance.py"
ENHANCE_OUTPUT_REASON = "output of enhance.py"


class PreprocessError(Exception):
    """A problem with the input (missing root, no usable MR image) that stops the run; the CLI prints it on
    one line and exits with status 2."""


class SplitError(ValueError):
    """A train/val split in which a patient appears on both sides (refused: it would leak the patient)."""


class SeriesReadError(Exception):
    """A series whose pixels cannot be read as one stack; `reason` is the short counted skip reason."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Series:
    """One MR series, ordered as described in the module docstring.

    frames: one (path, frame_index) per output slice; frame_index is None for single-frame files.
    sop_instance_uids, slopes, intercepts, temporal_index: one per frame, same order. rows, cols: the
    acquisition matrix. series_uid falls back to "folder:<relative folder>" when the tag is missing.
    """

    patient_id: str
    study_uid: str
    series_uid: str
    series_description: str
    modality: str
    rows: int
    cols: int
    frames: list
    sop_instance_uids: list
    slopes: list = field(default_factory=list)
    intercepts: list = field(default_factory=list)
    temporal_index: list = field(default_factory=list)
    layout: list = field(default_factory=list)  # (time_index, position_index) per frame, see _layout
    series_number: int = 0
    field_strength_t: float = None
    n_files: int = 0
    notes: list = field(default_factory=list)  # fallbacks used for missing tags
    truth_dir: str = None  # folder holding a noise-free truth sidecar (demo data only; see read_truth)


@dataclass
class Skips:
    """Skip counts: `files` per reason (every file seen is used or counted once here), `series` per reason."""

    files: Counter = field(default_factory=Counter)
    series: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # reason -> one example (path or series and message)

    def add_file(self, reason, example=""):
        self.files[reason] += 1
        self.examples.setdefault(reason, example)

    def add_series(self, reason, n_files, example=""):
        self.series[reason] += 1
        self.files[reason] += n_files
        self.examples.setdefault(reason, example)


# --------------------------------------------------------------------------------------------------------------
# 1. Index: headers only
# --------------------------------------------------------------------------------------------------------------

def list_files(root, exclude=None):
    """Every regular file under root in a stable (sorted) order. Hidden files and folders (".name") are not
    looked at, nor is `exclude` (the output folder, if it lies inside the tree)."""
    root, files = Path(root), []
    exclude = Path(exclude).resolve() if exclude is not None else None
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (exclude is None or Path(folder, d).resolve() != exclude))
        files.extend(os.path.join(folder, n) for n in sorted(names) if not n.startswith("."))
    return files


def scan_file(path, include_kinds=()):
    """Header record of one file (a dict, see _header_record) or a short skip reason (a str).

    Reads the header with stop_before_pixels and then only the 8-12 bytes of the pixel data element header,
    which tells whether pixel data is there and whether the file holds all of it (truncated downloads).
    include_kinds: IMAGE_KINDS to keep although they are not magnitude anatomy (preprocess.include_kinds)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # per-file pydicom warnings would flood the log; reasons are counted
            head = fp.read(132)
            fp.seek(0)
            # Files without the 128-byte preamble + "DICM" are read only when they start like a raw dataset
            # (group 0x0008 or 0x0002 first, as old exports do); anything else is not DICOM.
            raw = head[:2] in (b"\x08\x00", b"\x02\x00") and len(head) >= 8
            if head[128:132] != b"DICM" and not raw:
                return "not DICOM"
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=raw)
            reason = _skip_reason(ds) or _kind_reason(ds, include_kinds)
            if reason:
                return reason
            reason = _pixel_status(fp, ds, size)
            if reason:
                return reason
            return _header_record(path, ds)
    except InvalidDicomError:
        return "not DICOM"
    except Exception:  # noqa: BLE001 - any parser failure of one file is a counted skip, never a crash
        return "unreadable"


def _skip_reason(ds):
    """Short reason why this dataset is not a usable grayscale MR image, or None."""
    meta = getattr(ds, "file_meta", None)
    sop = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "") or "")
    modality = str(ds.get("Modality", "") or "").upper()
    if sop:
        if sop not in MR_IMAGE_SOP_CLASSES:
            return f"modality {modality}" if modality and modality != "MR" else f"SOP class {UID(sop).name}"
    elif modality != "MR":
        return f"modality {modality or 'missing'}"
    if "Rows" not in ds or "Columns" not in ds or "BitsAllocated" not in ds:
        # The image module is mandatory for these SOP classes: a header that stops before it was cut short.
        return "truncated"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return "color MR"
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip()
    if photometric != "MONOCHROME2":
        return f"photometric {photometric}"  # MONOCHROME1 (inverted) or palette: not seen in MR, not handled
    return None


def check_include_kinds(include_kinds):
    """The tuple of kinds in preprocess.include_kinds; ConfigError for a name that is not in IMAGE_KINDS."""
    if include_kinds is None:
        return ()
    if isinstance(include_kinds, str):
        include_kinds = [include_kinds]
    unknown = [k for k in include_kinds if k not in IMAGE_KINDS]
    if unknown:
        raise ConfigError(f"preprocess.include_kinds names {unknown}; choose from {', '.join(IMAGE_KINDS)} "
                          f"(enhance.py's own output cannot be included)")
    return tuple(include_kinds)


def _type_token(value):
    return str(value).strip().upper().replace("*", "STAR").replace(" ", "").replace("_", "").replace("-", "")


def _type_value_kinds(values):
    """Kinds named by ImageType / FrameType values from value 3 on (values 1-2 say ORIGINAL/DERIVED and
    PRIMARY/SECONDARY, nothing about the pixels)."""
    if values is None:
        return set()
    values = [values] if isinstance(values, str) else list(values)
    kinds = set()
    for value in values[2:]:
        token = _type_token(value)
        kind = _TYPE_VALUE_KINDS.get(token)
        if kind is None and token.startswith(_PROJECTION_PREFIXES):
            kind = "projection"
        if kind is not None:
            kinds.add(kind)
    return kinds


def _description_kinds(item):
    """Kinds told by an MR Image Description / frame type item (the dataset itself or an MRImageFrameTypeSequence
    item): ComplexImageComponent and VolumeBasedCalculationTechnique."""
    kinds = set()
    component = str(item.get("ComplexImageComponent", "") or "").strip().upper()
    if component in _COMPLEX_KINDS:
        kinds.add(_COMPLEX_KINDS[component])
    if str(item.get("VolumeBasedCalculationTechnique", "") or "").strip().upper() in _PROJECTION_TECHNIQUES:
        kinds.add("projection")
    return kinds


def _private_value(ds, group, creator, offset):
    """Value of a private element found by its creator (in whichever block it was given), or None. Raw bytes when
    the element is UN (a file re-encoded without the private dictionary): the caller decodes them."""
    try:
        return ds.get_private_item(group, offset, creator).value
    except (KeyError, ValueError, TypeError):
        return None


def _ge_kind(ds):
    value = _private_value(ds, 0x0043, _GE_CREATOR, 0x2F)
    if isinstance(value, bytes):
        value = int.from_bytes(value[:2], "little", signed=True) if len(value) >= 2 else None
    try:
        return _GE_COMPLEX.get(int(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def _philips_kind(ds):
    value = _private_value(ds, 0x2005, _PHILIPS_CREATOR, 0x11)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if value is None and "PHILIPS" in str(ds.get("Manufacturer", "") or "").upper():
        image_type = ds.get("ImageType")
        if image_type is not None and not isinstance(image_type, str) and len(image_type) >= 5:
            value = image_type[3]  # M_FFE\M\FFE: value 4 is the image_type_mr code
    return _PHILIPS_KINDS.get(str(value).strip().upper()) if value is not None else None


def image_kinds(ds):
    """The IMAGE_KINDS a header says it holds (an empty set for magnitude anatomy).

    Looks at ImageType values 3+, ComplexImageComponent and VolumeBasedCalculationTechnique (top level and, for
    enhanced and legacy converted MR, in the MR Image Frame Type functional group of the shared item and of every
    frame), the GE and Philips private image type codes. A multi-frame object with any frame of a kind counts as
    that kind (its frames are written back as one object by enhance.py, so it is used or skipped as a whole)."""
    kinds = _type_value_kinds(ds.get("ImageType")) | _description_kinds(ds)
    for vendor_kind in (_ge_kind(ds), _philips_kind(ds)):
        if vendor_kind is not None:
            kinds.add(vendor_kind)
    groups = list(ds.get("SharedFunctionalGroupsSequence") or []) + list(ds.get("PerFrameFunctionalGroupsSequence")
                                                                         or [])
    for group in groups:
        for item in group.get("MRImageFrameTypeSequence") or []:
            kinds |= _type_value_kinds(item.get("FrameType")) | _description_kinds(item)
    return kinds


def written_by_enhance(ds):
    """True when enhance.py wrote this object: its private creator, its ContributingEquipmentSequence item or its
    DerivationDescription (top level, or in a frame's Derivation Image functional group)."""
    for tag in ds.keys():
        if tag.is_private and 0x10 <= tag.element <= 0xFF:  # a private creator element (PS3.5 7.8.1)
            if str(ds[tag].value).strip() == ENHANCE_PRIVATE_CREATOR:
                return True
    if any(str(item.get("Manufacturer", "") or "").strip() == ENHANCE_SOFTWARE_NAME
           for item in ds.get("ContributingEquipmentSequence") or []):
        return True
    descriptions = [ds.get("DerivationDescription")]
    for key in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in list(ds.get(key) or [])[:1]:
            descriptions.extend(d.get("DerivationDescription") for d in group.get("DerivationImageSequence") or [])
    return any(str(d or "").startswith(ENHANCE_DERIVATION_PREFIX) for d in descriptions)


def _kind_reason(ds, include_kinds=()):
    """Skip reason for an MR image that is enhance.py's output or not magnitude anatomy, or None."""
    if written_by_enhance(ds):
        return ENHANCE_OUTPUT_REASON
    skipped = image_kinds(ds) - set(include_kinds)
    for kind in IMAGE_KINDS:  # one reason per file, in this order
        if kind in skipped:
            return KIND_REASONS[kind]
    return None


def _orientations_differ(frames):
    """True when the frames' ImageOrientationPatient differ by more than ORIENTATION_TOLERANCE (frames without
    one are not compared)."""
    orientations = [f["orientation"] for f in frames if f.get("orientation") is not None]
    if len(orientations) < 2:
        return False
    values = np.asarray(orientations, float)
    return bool(np.max(np.abs(values - values[0])) > ORIENTATION_TOLERANCE)


def _orientation(iop):
    try:
        if iop is not None and len(iop) == 6:
            return tuple(float(v) for v in iop)
    except (TypeError, ValueError):
        pass
    return None


def _pixel_status(fp, ds, file_size):
    """None if the pixel data element is present and complete, else "no pixel data" or "truncated".
    fp must stand where stop_before_pixels left it (at the pixel data tag, or at the end of the file)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return None  # the file position is meaningless in a deflated stream; the pixel read will tell
    implicit, little = ds.original_encoding
    if implicit is None:
        return None
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return "no pixel data"
    endian = "<" if little else ">"
    if struct.unpack(endian + "HH", head[:4]) not in _PIXEL_TAGS:
        return "no pixel data"
    if implicit:
        (length,), header = struct.unpack(endian + "L", head[4:8]), 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            return "truncated"
        (length,), header = struct.unpack(endian + "L", head[8:12]), 12
    else:
        (length,), header = struct.unpack(endian + "H", head[6:8]), 8
    available = file_size - start - header
    if length == 0xFFFFFFFF:  # encapsulated (compressed): at least a basic offset table item and a fragment
        return None if available >= 16 else "truncated"
    if length == 0:
        return "no pixel data"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = int(ds.Rows) * int(ds.Columns) * frames * int(ds.BitsAllocated) // 8
    if available < length or length < expected:
        return "truncated"
    return None


def _first(item, sequence, keyword):
    """item.<sequence>[0].<keyword>, or None when any level is missing."""
    if item is None:
        return None
    seq = item.get(sequence)
    if not seq:
        return None
    return seq[0].get(keyword)


def _seconds(value):
    """DICOM TM ('HHMMSS.frac', also 'HH:MM:SS') or DT ('YYYYMMDDHHMMSS.frac&zzzz') -> seconds, or None."""
    if value in (None, ""):
        return None
    text = re.split(r"[&+-]", str(value))[0].replace(":", "").strip()  # drop a UTC offset
    try:
        days = 0
        if len(text.split(".")[0]) > 6:  # DT: a date in front of the time
            days, text = datetime.strptime(text[:8], "%Y%m%d").toordinal(), text[8:]
        hours = int(text[0:2] or 0)
        minutes = int(text[2:4] or 0)
        secs = float(text[4:] or 0)
    except ValueError:
        return None
    return days * 86400.0 + hours * 3600.0 + minutes * 60.0 + secs


def _position(ipp, iop, fallback=None):
    """Position along the slice normal (mm): ImagePositionPatient . (row cosines x column cosines)."""
    try:
        if ipp is not None and iop is not None and len(ipp) == 3 and len(iop) == 6:
            normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
            return float(np.dot(np.asarray(ipp, float), normal))
    except (TypeError, ValueError):
        pass
    try:
        return float(fallback) if fallback not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _number(value, default=None):
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _header_record(path, ds):
    """The header fields the pipeline needs, as a small picklable dict (one frame entry per frame)."""
    def text(keyword):
        return str(ds.get(keyword, "") or "").strip()

    record = {
        "path": str(path), "folder": str(Path(path).parent),
        "patient_id": text("PatientID"), "patient_name": text("PatientName"),
        "study_uid": text("StudyInstanceUID"), "series_uid": text("SeriesInstanceUID"),
        "series_description": text("SeriesDescription"), "series_number": int(_number(ds.get("SeriesNumber"), 0)),
        "sop_uid": text("SOPInstanceUID") or str(getattr(ds, "file_meta", {}).get("MediaStorageSOPInstanceUID", "")),
        "rows": int(ds.Rows), "cols": int(ds.Columns),
        "field_strength_t": _number(ds.get("MagneticFieldStrength")),
        "frames": [],
    }
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    instance = _number(ds.get("InstanceNumber"), 0.0)
    slope0, intercept0 = _number(ds.get("RescaleSlope"), 1.0), _number(ds.get("RescaleIntercept"), 0.0)
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        # Enhanced / legacy converted MR: geometry, rescale and timing per frame, or shared by all frames.
        shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
        for i in range(n_frames):
            own = per_frame[i] if i < len(per_frame) else None

            def lookup(sequence, keyword, own=own):
                value = _first(own, sequence, keyword)
                return value if value is not None else _first(shared, sequence, keyword)

            slope = _number(lookup("PixelValueTransformationSequence", "RescaleSlope"), slope0)
            intercept = _number(lookup("PixelValueTransformationSequence", "RescaleIntercept"), intercept0)
            record["frames"].append({
                "frame": i,
                "temporal": _number(lookup("FrameContentSequence", "TemporalPositionIndex")),
                "position": _position(lookup("PlanePositionSequence", "ImagePositionPatient"),
                                      lookup("PlaneOrientationSequence", "ImageOrientationPatient")),
                "time": _seconds(lookup("FrameContentSequence", "FrameAcquisitionDateTime")),
                "acquisition": 0.0, "instance": instance, "slope": slope, "intercept": intercept,
                "orientation": _orientation(lookup("PlaneOrientationSequence", "ImageOrientationPatient"))})
    else:
        position = _position(ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"),
                             ds.get("SliceLocation"))
        orientation = _orientation(ds.get("ImageOrientationPatient"))
        for i in range(n_frames):
            record["frames"].append({
                "frame": i if n_frames > 1 else None,
                "temporal": _number(ds.get("TemporalPositionIdentifier")),
                "position": position, "time": _seconds(ds.get("AcquisitionTime")),
                "acquisition": _number(ds.get("AcquisitionNumber"), 0.0), "instance": instance,
                "slope": slope0, "intercept": intercept0, "orientation": orientation})
    return record


def group_series(records, root, skips, include_kinds=()):
    """Header records -> ordered list of Series (see the module docstring for the slice order).

    Fallbacks for missing tags: patient_id = PatientID, else PatientName, else "anon-<hash of the study or
    folder>"; series_uid = SeriesInstanceUID, else "folder:<relative folder>"; SOPInstanceUID, else
    "file:<relative path>". Duplicate SOP instances (the same image twice) count as skipped files, and a
    series whose images differ in size is skipped as "mismatched shapes", one whose images lie in different
    planes (a multi-plane localizer; dcm2niix refuses to stack these too) as MIXED_PLANES_REASON unless
    include_kinds has "localizer"."""
    root = Path(root)
    groups = defaultdict(list)
    for record in records:
        relative = os.path.relpath(record["folder"], root)
        notes = []
        if not record["series_uid"]:
            record["series_uid"] = f"folder:{relative}"
            notes.append("series_uid from folder")
        if not record["patient_id"]:
            if record["patient_name"]:
                record["patient_id"] = record["patient_name"]
                notes.append("patient_id from PatientName")
            else:
                anchor = record["study_uid"] or relative
                record["patient_id"] = "anon-" + hashlib.sha1(anchor.encode()).hexdigest()[:8]
                notes.append("patient_id from study/folder")
        if not record["sop_uid"]:
            record["sop_uid"] = "file:" + os.path.relpath(record["path"], root)
        record["notes"] = notes
        groups[record["series_uid"]].append(record)

    series_list = []
    for uid, files in groups.items():
        first = files[0]
        frames, seen = [], set()
        for record in files:
            keys = [(record["sop_uid"], f["frame"]) for f in record["frames"]]
            if any(k in seen for k in keys):
                skips.add_file("duplicate SOP instance", record["path"])
                continue
            seen.update(keys)
            frames.extend(dict(f, path=record["path"], sop_uid=record["sop_uid"], rows=record["rows"],
                               cols=record["cols"]) for f in record["frames"])
        n_files = len({f["path"] for f in frames})
        if len({(f["rows"], f["cols"]) for f in frames}) > 1:
            skips.add_series("mismatched shapes", n_files, f"series {uid}")
            continue
        if "localizer" not in include_kinds and _orientations_differ(frames):
            skips.add_series(MIXED_PLANES_REASON, n_files, f"series {uid} ({first['series_description']})")
            continue
        _assign_temporal(frames)
        frames.sort(key=lambda f: (f["t"], f["position"] if f["position"] is not None else 0.0, f["instance"],
                                   f["path"], f["frame"] or 0))
        series_list.append(Series(
            patient_id=first["patient_id"], study_uid=first["study_uid"], series_uid=uid,
            series_description=first["series_description"], modality="MR", rows=first["rows"],
            cols=first["cols"], frames=[(f["path"], f["frame"]) for f in frames],
            sop_instance_uids=[f["sop_uid"] for f in frames], slopes=[f["slope"] for f in frames],
            intercepts=[f["intercept"] for f in frames], temporal_index=[f["t"] for f in frames],
            layout=_layout(frames),
            series_number=first["series_number"],
            field_strength_t=next((r["field_strength_t"] for r in files if r["field_strength_t"]), None),
            n_files=n_files, notes=sorted({n for r in files for n in r["notes"]}),
            truth_dir=first["folder"] if (Path(first["folder"]) / TRUTH_FILE).is_file() else None))
    series_list.sort(key=lambda s: (s.patient_id, s.study_uid, s.series_number, s.series_uid))
    return series_list


def _layout(frames):
    """(time_index, position_index) of each frame in a sorted series: the rank of its temporal position and of
    its position along the slice normal (0.01 mm apart counts as the same), so frame (t, k) of a DCE series can
    be found from any other frame of it. Frames without a position are numbered in order within their time
    point. A series with one time point has time_index 0 throughout."""
    times = sorted({f["t"] for f in frames})
    positions = sorted({round(f["position"], 2) for f in frames if f["position"] is not None})
    time_rank, position_rank = {t: i for i, t in enumerate(times)}, {p: i for i, p in enumerate(positions)}
    layout, count = [], defaultdict(int)
    for f in frames:
        t = time_rank[f["t"]]
        if f["position"] is None:
            k = count[t]
            count[t] += 1
        else:
            k = position_rank[round(f["position"], 2)]
        layout.append((t, k))
    return layout


def _assign_temporal(frames):
    """Set f["t"]: the temporal position tag when every frame has one; else, when slice positions repeat (DCE
    without the tag), the rank by acquisition time among the frames at the same position; else 0."""
    if all(f["temporal"] is not None for f in frames):
        for f in frames:
            f["t"] = f["temporal"]
        return
    positions = [f["position"] for f in frames]
    if None in positions or len({round(p, 3) for p in positions}) == len(positions):
        for f in frames:
            f["t"] = 0
        return
    at_position = defaultdict(list)
    for f in frames:
        at_position[round(f["position"], 3)].append(f)
    for group in at_position.values():
        group.sort(key=lambda f: (f["time"] if f["time"] is not None else math.inf, f["acquisition"],
                                  f["instance"], f["path"], f["frame"] or 0))
        for rank, f in enumerate(group):
            f["t"] = rank


def filter_series(series_list, series_filter, skips):
    """Keep the series whose SeriesDescription matches the regex (re.search); "" keeps all."""
    if not series_filter:
        return list(series_list)
    try:
        pattern = re.compile(series_filter)
    except re.error as error:
        raise ConfigError(f"preprocess.series_filter {series_filter!r} is not a valid regex: {error}") from None
    kept = []
    for s in series_list:
        if pattern.search(s.series_description):
            kept.append(s)
        else:
            skips.add_series("series filter", s.n_files, s.series_description)
    return kept


# Below this many files the headers are read in the main process, while the workers start (a spawned worker
# needs about a second to import numpy, cv2 and pydicom; header reading costs about 1 ms per file).
PARALLEL_INDEX_MIN_FILES = 2000


def _scan_all(paths, pool=None, workers=1, progress=True, include_kinds=()):
    bar = tqdm(total=len(paths), unit="file", desc="index", disable=not progress or len(paths) < 200,
               mininterval=1.0)
    scan = partial(scan_file, include_kinds=tuple(include_kinds))
    if pool is None or len(paths) < PARALLEL_INDEX_MIN_FILES:
        results = []
        for path in paths:
            results.append(scan(path))
            bar.update()
    else:
        chunk = max(1, min(256, len(paths) // (8 * workers)))
        results = []
        for result in pool.map(scan, paths, chunksize=chunk):
            results.append(result)
            bar.update()
    bar.close()
    return results


def _index(root, series_filter, pool=None, workers=1, exclude=None, progress=True, include_kinds=()):
    """(series_list, Skips, files_seen): the shared body of index_tree, index and run."""
    include_kinds = check_include_kinds(include_kinds)
    paths = list_files(root, exclude=exclude)
    skips, records = Skips(), []
    for path, result in zip(paths, _scan_all(paths, pool, workers, progress, include_kinds)):
        if isinstance(result, str):
            skips.add_file(result, path)
        else:
            records.append(result)
    series_list = group_series(records, root, skips, include_kinds)
    series_list = filter_series(series_list, series_filter, skips)
    return series_list, skips, len(paths)


def index(root, series_filter="", include_kinds=(), exclude=None):
    """index_tree with the whole Skips (per-series counts too), as enhance.py reports them."""
    return _index(root, series_filter, exclude=exclude, progress=False, include_kinds=include_kinds)


def index_tree(root, series_filter="", include_kinds=()):
    """Index a DICOM tree by its headers only.

    Returns (series_list, skipped, files_seen): the ordered MR series, a Counter of skipped files per reason
    (series-level reasons such as "series filter" count the files of the series), and the number of files
    looked at. files_seen == sum(skipped.values()) + the files of series_list. include_kinds: IMAGE_KINDS to keep
    (preprocess.include_kinds)."""
    series_list, skips, files_seen = index(root, series_filter, include_kinds)
    return series_list, skips.files, files_seen


# --------------------------------------------------------------------------------------------------------------
# 2-5. Pixels, normalization, geometry
# --------------------------------------------------------------------------------------------------------------

def read_series(series):
    """float32 (n, rows, cols) in modality units: stored values * RescaleSlope + RescaleIntercept, per frame.

    Each file is decoded once (all its frames), through pydicom's pixel handlers (pylibjpeg plugins for
    JPEG 2000, JPEG-LS, JPEG lossless; RLE). Raises SeriesReadError("mismatched shapes") when a decoded image
    does not have the series' matrix; decoder errors propagate (the caller counts them as a skipped series)."""
    out = np.empty((len(series.frames), series.rows, series.cols), dtype=np.float32)
    slots = defaultdict(list)
    for k, (path, frame) in enumerate(series.frames):
        slots[path].append((k, frame))
    for path, items in slots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = pydicom.dcmread(path, force=True).pixel_array
        if pixels.ndim == 2:
            pixels = pixels[None]
        if pixels.ndim != 3 or pixels.shape[1:] != (series.rows, series.cols):
            raise SeriesReadError("mismatched shapes", f"{path} decodes to {pixels.shape}, series is "
                                  f"{series.rows}x{series.cols}")
        for k, frame in items:
            out[k] = pixels[frame or 0]
    slopes = np.asarray(series.slopes, dtype=np.float32)
    intercepts = np.asarray(series.intercepts, dtype=np.float32)
    if len(slopes) == len(out) and (np.any(slopes != 1) or np.any(intercepts != 0)):
        out *= slopes[:, None, None]
        out += intercepts[:, None, None]
    return out


def read_truth(series):
    """The noise-free truth of a series, float32 (n, rows, cols) in modality units and in the series' slice
    order, or None. Only the demo generator knows it: demo_data.write_truth leaves TRUTH_FILE (the images) and
    TRUTH_INDEX (their SOPInstanceUIDs) next to the DICOM files. Real data has no such files; a sidecar that does
    not cover every image of the series, or does not match its matrix, is ignored rather than half used."""
    if series.truth_dir is None or any(frame is not None for _, frame in series.frames):
        return None
    folder = Path(series.truth_dir)
    try:
        uids = json.loads((folder / TRUTH_INDEX).read_text())["sop_instance_uids"]
        images = np.load(folder / TRUTH_FILE, mmap_mode="r")
    except (OSError, ValueError, KeyError):
        return None
    position = {uid: i for i, uid in enumerate(uids)}
    if images.ndim != 3 or images.shape[1:] != (series.rows, series.cols) or len(images) != len(uids) \
            or any(uid not in position for uid in series.sop_instance_uids):
        return None
    return np.asarray(images[[position[uid] for uid in series.sop_instance_uids]], dtype=np.float32)


def robust_range(stack, percentiles):
    """(lo, hi) = the given percentiles (e.g. [0.5, 99.5]) of the whole stack; normalize as (x-lo)/(hi-lo).
    Both are rounded to float32 so that normalizing and undoing it use exactly the recorded numbers."""
    p_lo, p_hi = percentiles
    if not 0 <= p_lo < p_hi <= 100:
        raise ConfigError(f"preprocess.norm_percentiles {percentiles} must satisfy 0 <= lo < hi <= 100")
    lo, hi = np.percentile(np.asarray(stack, dtype=np.float32), [p_lo, p_hi])
    return float(np.float32(lo)), float(np.float32(hi))


def pad_to_square(img, value=0.0):
    """Pad (H, W) or (n, H, W) symmetrically (extra pixel at the bottom/right) to a square of side max(H, W).

    value: what the padding holds. preprocessing pads with the normalized value of zero signal, -lo/(hi-lo):
    outside the field of view a scanner records nothing, and un-normalizing the padding gives exactly 0."""
    img = np.asarray(img)
    rows, cols = img.shape[-2:]
    side = max(rows, cols)
    top, left = (side - rows) // 2, (side - cols) // 2
    pad = [(0, 0)] * (img.ndim - 2) + [(top, side - rows - top), (left, side - cols - left)]
    return np.pad(img, pad, mode="constant", constant_values=value)


def _interpolation(src_side, dst_side):
    # INTER_AREA averages when shrinking (no aliasing); INTER_CUBIC when enlarging (sharper than linear).
    return cv2.INTER_AREA if dst_side < src_side else cv2.INTER_CUBIC


def _square_slice(img, size, pad_value=0.0):
    square = pad_to_square(np.asarray(img, dtype=np.float32), pad_value)
    if square.shape[0] == size:
        return square
    return cv2.resize(square, (size, size), interpolation=_interpolation(square.shape[0], size))


def resize_square(stack, size, pad_value=0.0):
    """(n, H, W) -> float32 (n, size, size): pad to a square (aspect ratio kept), then resize each slice."""
    stack = np.asarray(stack)
    out = np.empty((stack.shape[0], size, size), dtype=np.float32)
    for i, img in enumerate(stack):
        out[i] = _square_slice(img, size, pad_value)
    return out


def unresize_square(stack, shape):
    """Exact geometric inverse of resize_square: (n, S, S) or (S, S) -> (n, rows, cols) or (rows, cols).
    Resizes back to the padded square side max(rows, cols), then crops the padding that pad_to_square added."""
    rows, cols = shape
    stack = np.asarray(stack, dtype=np.float32)
    squeeze = stack.ndim == 2
    if squeeze:
        stack = stack[None]
    side = max(rows, cols)
    top, left = (side - rows) // 2, (side - cols) // 2
    out = np.empty((stack.shape[0], rows, cols), dtype=np.float32)
    for i, img in enumerate(stack):
        if img.shape[0] != side:
            img = cv2.resize(img, (side, side), interpolation=_interpolation(img.shape[0], side))
        out[i] = img[top:top + rows, left:left + cols]
    return out[0] if squeeze else out


# --------------------------------------------------------------------------------------------------------------
# 6. Patient split
# --------------------------------------------------------------------------------------------------------------

SPLITS = ("train", "val", "test")


def check_split_fractions(fractions):
    """[train, val, test] fractions of patients -> tuple of floats; ConfigError unless they are >= 0, sum to 1
    and give training some patients."""
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6 or values[0] <= 0:
        raise ConfigError(f"preprocess.split is {fractions!r}; give three fractions [train, val, test] >= 0 that "
                          "sum to 1, with train > 0 (e.g. [0.6, 0.2, 0.2]; the thesis: [0.7, 0.3, 0.0])")
    return values


def patient_hash(patient_id, seed):
    """sha256(seed:patient_id) mapped to [0, 1): a patient's fixed place on the split line."""
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()
    return int(digest, 16) / 16 ** len(digest)


def split_patients(patient_ids, fractions, seed):
    """patient_id -> "train" | "val" | "test", by a hash threshold.

    Each patient sits at patient_hash(id, seed) in [0, 1); [0, f_train) is train, [f_train, f_train + f_val)
    val, the rest test. A patient's split depends only on its own id, the seed and the fractions: adding
    patients never moves anyone, and moving a boundary moves only the patients between its old and new place.
    The price is that small cohorts get only roughly the requested proportions (10 patients may give 4/1/5);
    summary.json lists the counts and `split_warnings` says what a cohort cannot support.
    """
    train, val, _ = check_split_fractions(fractions)
    out = {}
    for p in sorted({str(p) for p in patient_ids}):
        u = patient_hash(p, seed)
        out[p] = "train" if u < train else "val" if u < train + val else "test"
    return out


def split_warnings(split, fractions):
    """What a split cannot support, in words (empty when it has train, val and test patients as asked)."""
    counts = {name: sum(v == name for v in split.values()) for name in SPLITS}
    notes = []
    if len(split) < 3:
        notes.append(f"only {len(split)} patient(s): a train/val/test split needs at least 3; "
                     "main.py can train and validate but cannot report held-out test numbers")
    for name, fraction in zip(SPLITS, check_split_fractions(fractions)):
        if fraction > 0 and counts[name] == 0:
            consequence = {"train": "nothing to train on", "val": "no checkpoint selection: main.py refuses to "
                           "train", "test": "main.py reports on val and says so"}[name]
            notes.append(f"no {name} patients ({consequence}); add patients or change preprocess.split")
    return notes


def check_patient_split(rows):
    """Raise SplitError if any patient_id appears with more than one split in `rows` (dicts with
    "patient_id" and "split"). Run on the manifest rows before they are written."""
    splits = defaultdict(set)
    for row in rows:
        splits[row["patient_id"]].add(row["split"])
    leaked = sorted(p for p, s in splits.items() if len(s) > 1)
    if leaked:
        raise SplitError(f"patients in more than one split (refused, it would leak them): {leaked[:10]}"
                         f"{' ...' if len(leaked) > 10 else ''}")


# --------------------------------------------------------------------------------------------------------------
# 7. One series per worker, resumable
# --------------------------------------------------------------------------------------------------------------

def series_key(series):
    """<sanitized patient_id>_<sha1(series_uid)[:10]>: unique per series, readable per patient."""
    patient = re.sub(r"[^A-Za-z0-9._-]+", "-", series.patient_id).strip("-.")[:48] or "unknown"
    return f"{patient}_{hashlib.sha1(series.series_uid.encode()).hexdigest()[:10]}"


def arrays_hash(cfg):
    """Hash of the settings the arrays depend on: seed, degrade, and the preprocess keys that change pixels."""
    part = {"seed": cfg["seed"], "degrade": cfg["degrade"],
            "preprocess": {k: cfg["preprocess"][k] for k in ARRAY_PREPROCESS_KEYS}}
    return config_hash(part)


def _fingerprint(series):
    """Identity of a series' content as indexed: its images, their order and their rescale."""
    text = json.dumps([series.rows, series.cols, series.sop_instance_uids, [f for _, f in series.frames],
                       series.slopes, series.intercepts, series.truth_dir is not None, series.layout])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _tmp_path(path):
    return path.with_name(f"{_TMP_PREFIX}{os.getpid()}-{path.name}")


def _save_square(path, stack, size, pad_value, dtype):
    """Pad+resize `stack` slice by slice (size None: keep the acquisition matrix, no padding) and stream the slices
    into an .npy under a temporary name, then rename it. Memory stays at one acquisition-resolution stack whatever
    the output size, and no msync is forced (an np.memmap flush would wait for the disk on every series)."""
    tmp = _tmp_path(path)
    shape = stack.shape[1:] if size is None else (size, size)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": (len(stack),) + tuple(shape)}
    try:
        with open(tmp, "wb") as fp:
            np.lib.format.write_array_header_1_0(fp, header)
            for img in stack:
                img = img if size is None else _square_slice(img, size, pad_value)
                fp.write(np.ascontiguousarray(img).astype(dtype, copy=False).tobytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_text_atomic(path, text):
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def process_series(series, out_dir, cfg, chash):
    """Read, normalize, degrade, resize and write one series. Returns {"key", "status": "ok", "slices",
    "info"} or {"key", "status": "skipped", "reason", "detail"}; never raises for bad data."""
    key = series_key(series)
    arrays = Path(out_dir) / "arrays"
    pre = cfg["preprocess"]
    try:
        raw = read_series(series)
    except SeriesReadError as error:
        return {"key": key, "status": "skipped", "reason": error.reason, "detail": str(error)}
    except Exception as error:  # noqa: BLE001 - a decoder failure skips this series only
        return {"key": key, "status": "skipped", "reason": "pixel read failed",
                "detail": f"{type(error).__name__}: {error}"}
    lo, hi = robust_range(raw, pre["norm_percentiles"])
    if not hi > lo:
        return {"key": key, "status": "skipped", "reason": "constant image", "detail": f"lo = hi = {lo}"}
    # Degrade in the clean series' normalized units (the noise estimate and the simulation work on a [0, 1]-ish
    # scale), then renormalize all three images with the robust range of the *degraded* series: at inference only
    # the degraded image exists (enhance.py computes the same robust_range on its input), so the network must learn
    # on exactly that scale. The clean image and the truth follow with the same lo/hi.
    scale = np.float32(hi) - np.float32(lo)
    clean = raw
    clean -= np.float32(lo)
    clean /= scale
    zero = float(-np.float32(lo) / scale)
    noisy, info = degrade(clean, cfg["degrade"], series_rng(cfg["seed"], series.series_uid), zero=zero)
    for stack in (clean, noisy):  # back to modality units, in place
        stack *= scale
        stack += np.float32(lo)
    lo, hi = robust_range(noisy, pre["norm_percentiles"])
    if not hi > lo:
        return {"key": key, "status": "skipped", "reason": "constant image", "detail": f"lo = hi = {lo} (degraded)"}
    info = dict(info, sigma_source=info["sigma_source"] * float(scale) / (hi - lo),
                sigma_added=info["sigma_added"] * float(scale) / (hi - lo))
    scale = np.float32(hi) - np.float32(lo)
    for stack in (clean, noisy):
        stack -= np.float32(lo)
        stack /= scale
    zero = float(-np.float32(lo) / scale)  # normalized value of zero signal
    size = None if pre["image_size"] is None else int(pre["image_size"])
    dtype = np.dtype(pre["dtype"])
    # The old sidecar goes first: arrays half-rewritten under new settings must never pass for the old ones.
    (arrays / f"{key}.json").unlink(missing_ok=True)
    _save_square(arrays / f"{key}_clean.npy", clean, size, zero, dtype)
    _save_square(arrays / f"{key}_noisy.npy", noisy, size, zero, dtype)
    del noisy
    truth = read_truth(series)
    truth_file = ""
    if truth is not None:
        # the truth takes the clean image's exact path: same lo/hi, same zero, same pad and resize
        truth -= np.float32(lo)
        truth /= scale
        truth_file = f"arrays/{key}_truth.npy"
        _save_square(arrays / f"{key}_truth.npy", truth, size, zero, dtype)
    layout = series.layout or [(0, i) for i in range(len(series.sop_instance_uids))]
    n_times, n_positions = 1 + max(t for t, _ in layout), 1 + max(k for _, k in layout)
    rows = [{
        "patient_id": series.patient_id, "study_uid": series.study_uid, "series_uid": series.series_uid,
        "series_description": series.series_description, "slice_index": i,
        "clean_file": f"arrays/{key}_clean.npy", "noisy_file": f"arrays/{key}_noisy.npy",
        "norm_lo": lo, "norm_hi": hi, "sigma_source": info["sigma_source"], "sigma_added": info["sigma_added"],
        "snr_ratio": info["snr_ratio"], "degrade_model": info["model"], "rows": series.rows, "cols": series.cols,
        "sop_instance_uid": sop, "config_hash": chash, "truth_file": truth_file,
        "time_index": t, "n_times": n_times, "position_index": k, "n_positions": n_positions}
        for i, (sop, (t, k)) in enumerate(zip(series.sop_instance_uids, layout))]
    sidecar = {"series_key": key, "config_hash": chash, "fingerprint": _fingerprint(series),
               "slices": len(rows), "info": info, "field_strength_t": series.field_strength_t,
               "notes": series.notes, "rows": rows}
    # Written last: its presence (with a matching hash) is what marks the series as done.
    _write_text_atomic(arrays / f"{key}.json", json.dumps(sidecar, default=float))
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
    needed = [f"{key}_clean.npy", f"{key}_noisy.npy"] + [f"{key}_truth.npy"] * (series.truth_dir is not None)
    if not all((arrays / name).is_file() for name in needed):
        return None
    return sidecar


def _init_worker():
    cv2.setNumThreads(1)  # one process per core already; cv2's own threads would only oversubscribe
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def check_config(cfg):
    """Raise ConfigError for preprocess/degrade values the pipeline cannot use (before any work)."""
    pre, deg = cfg["preprocess"], cfg["degrade"]
    if pre["image_size"] is not None and (not isinstance(pre["image_size"], int) or pre["image_size"] < 8):
        raise ConfigError(f"preprocess.image_size is {pre['image_size']!r}; give an integer >= 8 (e.g. 512), or "
                          "null to keep each series' acquisition matrix")
    if pre["dtype"] not in DTYPES:
        raise ConfigError(f"preprocess.dtype is {pre['dtype']!r}; choose one of {', '.join(DTYPES)}")
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


def run(dicom_root, out_dir, cfg, workers=1, progress=True):
    """The whole pipeline; returns the summary dict (also written to <out_dir>/summary.json).

    workers: processes (ProcessPoolExecutor, spawn start method so that a parent that has loaded TensorFlow or
    other threaded libraries is never forked); 1 runs everything in this process. Raises PreprocessError for a
    missing root or a tree without usable MR images, ConfigError for unusable settings."""
    started = time.perf_counter()
    check_config(cfg)
    root, out = Path(dicom_root), Path(out_dir)
    if not root.is_dir():
        raise PreprocessError(f"DICOM root {root} does not exist or is not a folder")
    # pydicom logs per-file warnings and decoder tracebacks; the problems are counted and reported instead.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    pool = None
    if workers > 1:
        import multiprocessing

        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker)
        for _ in range(workers):  # start the workers now: they import while this process reads headers
            pool.submit(os.getpid)
    try:
        series_list, skips, files_seen = _index(root, cfg["preprocess"]["series_filter"], pool, workers,
                                                exclude=out, progress=progress,
                                                include_kinds=cfg["preprocess"]["include_kinds"])
        indexed = time.perf_counter()
        series_found = len(series_list) + sum(skips.series.values())  # before any pixel was read
        if not series_list:
            raise PreprocessError(f"no usable MR image under {root} ({files_seen} files seen; skipped: "
                                  f"{_format_counts(skips.files) or 'none'})")
        n_slices = sum(len(s.frames) for s in series_list)
        log.info("indexed %d files in %.1f s: %d MR series, %d slices, %d patients", files_seen,
                 indexed - started, len(series_list), n_slices, len({s.patient_id for s in series_list}))
        arrays = out / "arrays"
        arrays.mkdir(parents=True, exist_ok=True)
        for stale in arrays.glob(_TMP_PREFIX + "*"):  # left by an interrupted run (one run per --out at a time)
            stale.unlink(missing_ok=True)
        chash = arrays_hash(cfg)
        results, todo = {}, []
        for s in series_list:
            sidecar = _reusable(s, arrays, chash)
            if sidecar is not None:
                results[s.series_uid] = {"key": series_key(s), "status": "reused", "slices": sidecar["slices"],
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
                results[s.series_uid] = process_series(s, out, cfg, chash)
                bar.update(len(s.frames))
        else:
            futures = {pool.submit(process_series, s, out, cfg, chash): s for s in todo}
            for future in as_completed(futures):
                s = futures[future]
                results[s.series_uid] = future.result()
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
        result = results[s.series_uid]
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
        rows.extend(sidecar["rows"])
    split = split_patients([s.patient_id for s in used], cfg["preprocess"]["split"], cfg["seed"])
    for row in rows:
        row["split"] = split[row["patient_id"]]
    check_patient_split(rows)
    _write_manifest(out / "manifest.csv", rows)

    infos = [results[s.series_uid]["info"] for s in used]
    sigma_methods = Counter(i.get("sigma_method", "") for i in infos)
    field_strengths = Counter(str(s.field_strength_t) for s in used)
    summary = {
        "dicom_root": str(root), "out_dir": str(out), "files_seen": files_seen,
        "files_used": sum(s.n_files for s in used), "files_skipped": dict(sorted(skips.files.items())),
        "series_found": series_found, "series_used": len(used),
        "series_processed": sum(results[s.series_uid]["status"] == "ok" for s in used),
        "series_reused": sum(results[s.series_uid]["status"] == "reused" for s in used),
        "series_skipped": dict(sorted(skips.series.items())),
        "skip_examples": {r: str(e) for r, e in sorted(skips.examples.items())},
        "slices": len(rows),
        "patients": {name: sum(v == name for v in split.values()) for name in SPLITS},
        "patients_per_split": {name: sorted(p for p, v in split.items() if v == name) for name in SPLITS},
        "split_fractions": list(check_split_fractions(cfg["preprocess"]["split"])),
        "split_warnings": split_warnings(split, cfg["preprocess"]["split"]),
        "slices_per_split": {name: sum(r["split"] == name for r in rows) for name in SPLITS},
        "sigma_methods": dict(sigma_methods),
        "field_strengths_t": dict(field_strengths),
        "series_notes": dict(Counter(n for s in used for n in s.notes)),
        "series_with_truth": sum(r["truth_file"] != "" for r in rows if r["slice_index"] == 0),
        "image_size": cfg["preprocess"]["image_size"], "dtype": cfg["preprocess"]["dtype"],
        "config_hash": chash, "workers": workers,
        "seconds_index": round(indexed - started, 3), "seconds_process": round(processed - indexed, 3),
        "seconds": round(time.perf_counter() - started, 3),
        "config": cfg,
    }
    _write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    _log_skips(skips)
    for note in summary["split_warnings"]:
        log.warning("split: %s", note)
    if sigma_methods.get("none"):
        log.warning("%d series had no measurable noise: the field model added none to them (use "
                    "degrade.model=gaussian for noise-free data)", sigma_methods["none"])
    if cfg["degrade"]["model"] == "field":
        off = sorted({s.field_strength_t for s in used if s.field_strength_t
                      and abs(s.field_strength_t - float(cfg["degrade"]["source_field_t"])) > 0.25})
        if off:
            log.warning("some series were acquired at %s T, not degrade.source_field_t = %s T", off,
                        cfg["degrade"]["source_field_t"])
    return summary


def _write_manifest(path, rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    text = buffer.getvalue()
    if path.is_file() and path.read_text() == text:
        return  # unchanged: leave the file (and its mtime) alone
    _write_text_atomic(path, text)


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
    import demo_data  # only needed without --dicom-root

    demo = cfg["demo"]
    return demo_data.ensure_demo_tree(demo["out"], patients=demo["patients"], seed=demo["seed"],
                                      slices=demo["slices"], time_points=demo["time_points"],
                                      matrix=demo["matrix"], texture_beta=demo["texture_beta"],
                                      motion_mm=demo["motion_mm"])


def main(argv=None):
    parser = argparse.ArgumentParser(description="DICOM tree -> paired clean/degraded slice arrays + manifest.")
    parser.add_argument("--dicom-root", help="folder with the DICOM tree (default: the embedded demo tree)")
    parser.add_argument("--out", default="data/processed", help="output folder (default data/processed)")
    parser.add_argument("--config", help="YAML file with the settings that differ from config.DEFAULTS")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set preprocess.image_size=256 (repeatable)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--benchmark", action="store_true",
                        help="preprocess into a temporary folder inside --out and print slices/s and peak memory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.workers < 1:
            raise ConfigError(f"--workers is {args.workers}; give 1 or more")
        cfg = load_config(args.config, args.set)
        root = Path(args.dicom_root) if args.dicom_root else demo_root(cfg)
        if args.benchmark:
            print(json.dumps(benchmark(root, cfg, workers=args.workers, out_dir=args.out), indent=2))
            return
        summary = run(root, args.out, cfg, workers=args.workers)
    except (PreprocessError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    skipped = sum(summary["series_skipped"].values())
    print(f"{summary['slices']} slices of {summary['series_used']} series ({summary['series_reused']} reused) "
          f"from {summary['files_used']} of {summary['files_seen']} files; patients train "
          f"{summary['patients']['train']} / val {summary['patients']['val']} / test {summary['patients']['test']}; "
          f"{skipped} series and "
          f"{sum(summary['files_skipped'].values())} files skipped; {summary['seconds']:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
