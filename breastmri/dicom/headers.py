"""One file's header as the small, picklable record the index groups into series (no pixel data read).

_header_record(path, ds) -> {"path", "patient_id", "study_uid", "series_uid", ..., "acquisition", "times",
"frames": one entry per frame with its temporal position, position along the slice normal, acquisition time,
rescale and orientation}. Classic MR keeps these at the top level; Enhanced and Legacy Converted Enhanced MR per
frame or shared in functional groups. Missing or malformed values become None, never an exception.
"""

import math
import re
import struct
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom

from breastmri.dicom.kinds import _private_value

# Whether an arterial spin labelling source image is a label or a control image: the standard ASL Context
# (0018,9257: LABEL, CONTROL, M_ZERO_SCAN; in the MR Arterial Spin Labeling or the MR Image Frame Type functional
# group of enhanced MR frames), else Philips' Label Type ((2005,xx29) of this creator, LABEL or CONTROL, on classic
# images; raw bytes in implicit-VR files, as pydicom's dictionary lacks it). Philips' enhanced objects keep theirs in
# a private per-frame sequence, which is not read: their label and control frames stay one series.
_PHILIPS_LABEL_TYPE = (0x2005, "Philips MR Imaging DD 005", 0x29)
_ASL_GROUPS = ("MRArterialSpinLabelingSequence", "MRImageFrameTypeSequence")


def _asl_context(*values):
    """"label", "control", "m_zero_scan" (lower case) or None: the first of `values` (ASL Context, Label Type) that
    says one."""
    return next((text.lower() for text in map(text_value, values) if text), None)


# The diffusion weighting of an image, where the standard DiffusionBValue (0018,9087) is missing: Siemens (0019,xx0C)
# of "SIEMENS MR HEADER" (IS), GE (0043,xx39) of "GEMS_PARM_01" (IS, the first value; GE adds 10^9 to some), Philips
# (2001,xx03) of "Philips Imaging DD 001" (FL). The sources: pydicom's private dictionary, dcm2niix's readers. GE
# writes its element on every image, so the private elements are read only for an echo-planar image (ScanningSequence
# EP, as every clinical diffusion sequence is): a gradient-echo DCE phase never gets a b-value from them.
_B_VALUE_PRIVATE = ((0x0019, "SIEMENS MR HEADER", 0x0C), (0x0043, "GEMS_PARM_01", 0x39),
                    (0x2001, "Philips Imaging DD 001", 0x03))


def _b_value(ds):
    """The b-value (s/mm^2) of a classic image, or None: DiffusionBValue, else (an echo-planar image only) a vendor's
    private element."""
    value = _number(ds.get("DiffusionBValue"))
    if value is None and "EP" in text_value(ds.get("ScanningSequence")).upper().split("\\"):
        value = next((v for v in (_private_number(ds, *where) for where in _B_VALUE_PRIVATE) if v is not None), None)
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return round(value % 1e9, 1)  # GE's offset of 10^9 off


# Philips scales each image to fill its integer range and says by how much in a private Scale Slope ((2005,xx0E) of
# "Philips MR Imaging DD 001", FL): the display values (RescaleSlope and RescaleIntercept) then differ from the
# measured signal by a factor that may change from image to image, e.g. between the dynamics of a DCE, whose time
# courses would be false. The measured ("precise") value is DV / (RescaleSlope x ScaleSlope) (Chenevert et al.,
# Transl Oncol 2014;7:65-71; dcm2niix's default): stored values map to it with slope 1 / ScaleSlope and intercept
# RescaleIntercept / (RescaleSlope x ScaleSlope). Philips' enhanced objects keep it per frame in their private
# sequence (2005,xx0F of "Philips MR Imaging DD 005"), read there too: a frame's own group first, then the groups
# shared by all frames, then the top level (_group_scale).
_PHILIPS_SCALE_SLOPE = (0x2005, "Philips MR Imaging DD 001", 0x0E)
_PHILIPS_FRAME_PRIVATE = (0x2005, "Philips MR Imaging DD 005", 0x0F)


def _philips_scale(item):
    """The Philips Scale Slope of a dataset or functional group item (a positive finite number), or None."""
    if item is None:
        return None
    raw = _private_value(item, *_PHILIPS_SCALE_SLOPE)
    if isinstance(raw, bytes):  # UN (re-encoded without the private dictionary): one little endian float
        raw = struct.unpack("<f", raw[:4])[0] if len(raw) >= 4 else None
    value = _number(text_value(raw).split("\\")[0].strip()) if raw is not None else None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def _group_scale(group):
    """The Philips Scale Slope of a functional group item: in its private sequence, else in the item itself."""
    if group is None:
        return None
    private = _private_value(group, *_PHILIPS_FRAME_PRIVATE)
    inner = _philips_scale(private[0]) if isinstance(private, pydicom.Sequence) and len(private) else None
    return inner or _philips_scale(group)


def _precise(scale, slope, intercept):
    """(slope, intercept) from stored values to the measured signal: the rescale itself without a Philips Scale
    Slope (or with a rescale slope of 0, which read_series refuses), else the precise value's (above)."""
    if scale is None or not slope:
        return slope, intercept
    return 1.0 / scale, intercept / (slope * scale)


def _private_text(ds, group, creator, offset):
    """A private element's value as text ("" when missing), multiple values joined by backslashes; raw bytes (an UN
    element: a file re-encoded without the private dictionary, or implicit VR) decoded."""
    raw = _private_value(ds, group, creator, offset)
    return raw.decode("ascii", "replace").strip("\x00 ") if isinstance(raw, bytes) else text_value(raw)


def _private_number(ds, group, creator, offset):
    """The first value of a private element as a number, or None."""
    return _number(_private_text(ds, group, creator, offset).split("\\")[0].strip())


def _orientation(iop):
    try:
        if iop is not None and len(iop) == 6:
            return tuple(float(v) for v in iop)
    except (TypeError, ValueError):
        pass
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


def _moment(ds, kind):
    """Seconds of the file's Acquisition or Content moment (`kind`), its date included, so that a dynamic acquired
    across midnight keeps its order: <kind>DateTime where present, else <kind>Time on <kind>Date (or, missing, on
    the Series or Study date, the same for every file of a series), else the time of day alone; None without a
    time."""
    moment = _seconds(ds.get(f"{kind}DateTime")) if kind == "Acquisition" else None
    if moment is not None:
        return moment
    time = str(ds.get(f"{kind}Time") or "").strip()
    of_day = _seconds(time)
    dates = (str(d or "").strip() for d in (ds.get(f"{kind}Date"), ds.get("SeriesDate"), ds.get("StudyDate")))
    date = next((d for d in dates if re.fullmatch(r"\d{8}", d)), None)
    return of_day if of_day is None or date is None else _seconds(date + time)


def _position(ipp, iop, fallback=None):
    """Position along the slice normal (mm): ImagePositionPatient . (row cosines x column cosines), else the
    fallback (SliceLocation); None when neither is a finite number ("NaN" parses, and never equals itself)."""
    value = None
    try:
        if ipp is not None and iop is not None and len(ipp) == 3 and len(iop) == 6:
            normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
            value = float(np.dot(np.asarray(ipp, float), normal))
    except (TypeError, ValueError):
        pass
    if value is None or not math.isfinite(value):
        try:
            value = float(fallback) if fallback not in (None, "") else None
        except (TypeError, ValueError):
            value = None
    return value if value is not None and math.isfinite(value) else None


def _number(value, default=None):
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def text_value(value):
    """A multi-valued text attribute (ScanningSequence, ImageType) as one backslash-joined string."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _tesla(value):
    """MagneticFieldStrength in tesla: older exports wrote it in gauss (15000 for 1.5 T); no scanner has 100 T."""
    return value / 10000.0 if value is not None and value > 100 else value


def _rounded(values, digits=3):
    """PixelSpacing and the like as a tuple of rounded floats (exported decimals differ in their last digits)."""
    try:
        return tuple(round(float(v), digits) for v in values) if values else ()
    except (TypeError, ValueError):
        return ()


# Where an enhanced (multi-frame) MR object keeps what a classic image has at its top level: the functional groups
# (PS3.3 C.8.13.5) of the first frame, else of the shared item. (acquisition key, sequence, keyword)
_ENHANCED_ACQUISITION = (
    ("tr_ms", "MRTimingAndRelatedParametersSequence", "RepetitionTime"),
    ("flip_deg", "MRTimingAndRelatedParametersSequence", "FlipAngle"),
    ("te_ms", "MREchoSequence", "EffectiveEchoTime"),
    ("ti_ms", "MRModifierSequence", "InversionTimes"),
    ("pixel_spacing", "PixelMeasuresSequence", "PixelSpacing"),
    ("image_type", "MRImageFrameTypeSequence", "FrameType"))


def _group_value(own, shared, sequence, keyword):
    """A functional group value of an enhanced object's frame: its own group's, else the shared group's, or None."""
    value = _first(own, sequence, keyword)
    return value if value is not None else _first(shared, sequence, keyword)


def _enhanced_acquisition(ds, acquisition):
    """Fill `acquisition` (headers' record) from an enhanced object's functional groups where its top level has
    nothing: two series whose echo times live there would otherwise both read None and compare equal
    (dynamics.acquisition_key), e.g. the opposed- and in-phase series of one Dixon acquisition."""
    if "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds:
        return
    own = (ds.get("PerFrameFunctionalGroupsSequence") or [None])[0]
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    for key, sequence, keyword in _ENHANCED_ACQUISITION:
        value = _group_value(own, shared, sequence, keyword)
        if acquisition.get(key) not in (None, "", ()) or value in (None, ""):
            continue
        if key == "pixel_spacing":
            acquisition[key] = _rounded(value)
        elif key == "image_type":
            acquisition[key] = text_value(value)
        else:  # InversionTimes holds several values, or one (which pydicom reads back as a plain number)
            several = isinstance(value, (list, tuple, pydicom.multival.MultiValue))
            acquisition[key] = _number(value[0] if several and len(value) else None if several else value)
    if not acquisition.get("sequence_name"):
        acquisition["sequence_name"] = text_value(ds.get("PulseSequenceName"))
    if not acquisition.get("scanning_sequence"):
        acquisition["scanning_sequence"] = text_value(ds.get("EchoPulseSequence"))


def _header_record(path, ds):
    """The header fields the pipeline needs, as a small picklable dict (one frame entry per frame)."""
    def text(keyword):  # a value with a backslash reads as several; joined back as written
        return text_value(ds.get(keyword, "") or "")

    acquired = _moment(ds, "Acquisition")  # the file's; enhanced frames carry their own FrameAcquisitionDateTime
    record = {
        "path": str(path), "folder": str(Path(path).parent),
        "patient_id": text("PatientID"), "patient_name": text("PatientName"),
        "study_uid": text("StudyInstanceUID"), "series_uid": text("SeriesInstanceUID"),
        "series_description": text("SeriesDescription"), "series_number": int(_number(ds.get("SeriesNumber"), 0)),
        "sop_uid": text("SOPInstanceUID") or str(getattr(ds, "file_meta", {}).get("MediaStorageSOPInstanceUID", "")),
        "rows": int(ds.Rows), "cols": int(ds.Columns),
        "field_strength_t": _tesla(_number(ds.get("MagneticFieldStrength"))),
        "padded": "PixelPaddingValue" in ds,
        "frames": [],
        # what dynamics.assemble_dynamics compares across series (a DCE stored one series per time point)
        "acquisition": {
            "frame_of_reference_uid": text("FrameOfReferenceUID"), "protocol": text("ProtocolName"),
            "scanning_sequence": text_value(ds.get("ScanningSequence")), "sequence_name": text("SequenceName"),
            "pixel_spacing": _rounded(ds.get("PixelSpacing")),
            "tr_ms": _number(ds.get("RepetitionTime")), "te_ms": _number(ds.get("EchoTime")),
            "flip_deg": _number(ds.get("FlipAngle")), "ti_ms": _number(ds.get("InversionTime")),
            "image_type": text_value(ds.get("ImageType")), "scan_options": text("ScanOptions"),
        },
        "times": {"trigger_ms": _number(ds.get("TriggerTime")), "acquisition": acquired,
                  "content": _moment(ds, "Content"), "acquisition_number": _number(ds.get("AcquisitionNumber"))},
    }
    _enhanced_acquisition(ds, record["acquisition"])
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    instance = _number(ds.get("InstanceNumber"), 0.0)
    slope0, intercept0 = _number(ds.get("RescaleSlope"), 1.0), _number(ds.get("RescaleIntercept"), 0.0)
    philips = "PHILIPS" in text_value(ds.get("Manufacturer")).upper()
    scale0 = _philips_scale(ds) if philips else None
    asl = _asl_context(ds.get("ASLContext"), _private_text(ds, *_PHILIPS_LABEL_TYPE))  # the file's
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        # Enhanced / legacy converted MR: geometry, rescale and timing per frame, or shared by all frames.
        shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
        for i in range(n_frames):
            own = per_frame[i] if i < len(per_frame) else None

            def lookup(sequence, keyword, own=own):
                return _group_value(own, shared, sequence, keyword)

            slope = _number(lookup("PixelValueTransformationSequence", "RescaleSlope"), slope0)
            intercept = _number(lookup("PixelValueTransformationSequence", "RescaleIntercept"), intercept0)
            if philips:
                scale = _group_scale(own) or _group_scale(shared) or scale0
                slope, intercept = _precise(scale, slope, intercept)
            record["frames"].append({
                "frame": i,
                "temporal": _number(lookup("FrameContentSequence", "TemporalPositionIndex")),
                "position": _position(lookup("PlanePositionSequence", "ImagePositionPatient"),
                                      lookup("PlaneOrientationSequence", "ImageOrientationPatient")),
                "time": _seconds(lookup("FrameContentSequence", "FrameAcquisitionDateTime")),
                "b_value": _number(lookup("MRDiffusionSequence", "DiffusionBValue")),
                "asl": _asl_context(*(lookup(group, "ASLContext") for group in _ASL_GROUPS), asl),
                "acquisition": 0.0, "trigger": None, "instance": instance, "slope": slope, "intercept": intercept,
                "orientation": _orientation(lookup("PlaneOrientationSequence", "ImageOrientationPatient"))})
    else:
        position = _position(ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"),
                             ds.get("SliceLocation"))
        orientation = _orientation(ds.get("ImageOrientationPatient"))
        b_value = _b_value(ds)
        precise = _precise(scale0, slope0, intercept0)
        for i in range(n_frames):
            record["frames"].append({
                "frame": i if n_frames > 1 else None,
                "temporal": _number(ds.get("TemporalPositionIdentifier")),
                "position": position, "time": acquired, "b_value": b_value, "asl": asl,
                "acquisition": _number(ds.get("AcquisitionNumber"), 0.0), "trigger": record["times"]["trigger_ms"],
                "instance": instance,
                "slope": precise[0], "intercept": precise[1], "orientation": orientation})
    return record
