"""Writing an enhanced series as DICOM: enhance.py's steps 3 and 4 (see its docstring for the rules).

    stored, clipped = to_stored(modality, slopes, intercepts, bits_stored, bits_allocated, signed)
    n_files, clipped = write_series(series, enhanced_modality_values, enhancer, folder, new_series_uid, created,
                                    padding)

The output of a series is the input files' headers with the enhanced pixels in the stored units: a derived object
of the same SOP class (classic MR stays MR Image, Enhanced and legacy converted MR stay multi-frame), new UIDs
derived deterministically from the source and the model (derived_uid), DERIVED image and frame types, references
to the source images, the enhance.py markers preprocessing recognizes, geometry and units untouched, pixel data
uncompressed explicit VR little endian. tests/test_dciodvfy.py checks that dciodvfy finds no error the source did
not already have. `enhancer` is enhance.Enhancer (its model_sha, config_hash, cfg, name and model_path label the
output).
"""

import hashlib
import re
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pydicom.charset
import pydicom.config
import pydicom.multival
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from breastmri.dicom import pixels
from breastmri.dicom.headers import text_value
from breastmri.dicom.kinds import (
    ENHANCE_DERIVATION_PREFIX,
    ENHANCE_PRIVATE_CREATOR,
    ENHANCE_PRIVATE_GROUP,
    ENHANCE_SOFTWARE_NAME,
)
from breastmri.dicom.pixels import lossy_method

# One series cannot be written: the exception preprocessing skips a series with; `reason` is the counted reason.
SeriesError = pixels.SeriesReadError

SERIES_NUMBER_OFFSET = 1000
IS_MAX = 2 ** 31 - 1  # the largest Integer String value (PS3.5 6.2)
DESCRIPTION_SUFFIX = " enhanced"
UID_SOURCE = "mri-enhance"  # first part of the name of every UID we derive (a namespace of our own)
# PS3.16 CID 7202 "Source Image Purpose of Reference": what the SourceImageSequence items are for.
PURPOSE_SOURCE_IMAGE = ("121322", "DCM", "Source image for image processing operation")
# PS3.16 CID 7203 "Image Derivation": the closest standard code for a denoising network (CID 7203 has no
# "denoising"; "Smoothing" is the operation a noise-reducing filter is coded as).
DERIVATION_SMOOTHING = ("113087", "DCM", "Smoothing")
# PS3.16 CID 7005 "Contributing Equipment Purposes of Reference": how enhance.py is named in the output.
PURPOSE_PROCESSING_EQUIPMENT = ("109102", "DCM", "Processing Equipment")
SOFTWARE_NAME = ENHANCE_SOFTWARE_NAME  # kinds.written_by_enhance recognizes it
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
    """Modality values (n, H, W) -> (stored integers, clipped): (value - intercept) / slope per frame, rounded to
    the nearest integer, clipped to the BitsStored range, in the pixel cell dtype; clipped counts the values above
    that range, brighter than the source's format can hold (below its lowest value, an unsigned 0, is where a
    denoiser's output of the noise floor goes and says nothing)."""
    slopes = np.asarray(slopes, dtype=np.float64)[:, None, None]
    intercepts = np.asarray(intercepts, dtype=np.float64)[:, None, None]
    if np.any(slopes == 0) or not np.all(np.isfinite(slopes)):
        raise SeriesError("invalid rescale", "RescaleSlope is 0 or not finite")
    values = np.rint((np.asarray(modality, dtype=np.float64) - intercepts) / slopes)
    low, high = stored_range(bits_stored, signed)
    values = np.nan_to_num(values, nan=0.0)
    clipped = int(np.count_nonzero(values > high))
    return np.clip(values, low, high).astype(stored_dtype(bits_allocated, signed)), clipped


# --------------------------------------------------------------------------------------------------------------
# DICOM output
# --------------------------------------------------------------------------------------------------------------

def derived_uid(*parts):
    """Deterministic '2.25.<decimal UUID>' UID (PS3.5 B.2) from a name-based UUID (RFC 4122 version 5, SHA-1)
    of the parts. Not pydicom's generate_uid(prefix=None, entropy_srcs=...): pydicom 3.0 ignores entropy_srcs
    when prefix is None and returns a random UUID4, which a re-run could never reproduce."""
    name = "\\".join([UID_SOURCE] + [str(p) for p in parts])
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}")


def derived_series_uid(series, enhancer, context=None):
    """UID of the enhanced series: from the source series UID, the model's config hash and file sha256, and the
    SOPInstanceUIDs of what the model saw (see the module docstring): `context`, the assembled dynamic a source
    series was enhanced in, else the series itself. A time point enhanced alone and within its dynamic differ."""
    seen = (context or series).sop_instance_uids
    sops = hashlib.sha256("\\".join(sorted(seen)).encode()).hexdigest()
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
        try:
            out.add(DataElement(elem.tag, elem.VR, value))
        except (ValueError, TypeError, OverflowError):
            if elem.VR not in ("DS", "IS"):
                raise
            repaired = _number_string(elem)
            if repaired is not None:
                out.add(repaired)
    return out


def _number_string(elem):
    """A DS or IS element whose value its VR cannot hold, read once more with a decimal comma taken for a point
    (DS "1,625", as some exports write it); None when that fails too (the element is then dropped)."""
    value = elem.value
    values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    text = [(v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)).replace(",", ".").strip(" \x00")
            for v in values]
    try:
        with pydicom.config.strict_reading():
            return DataElement(elem.tag, elem.VR, text if len(text) > 1 else text[0])
    except (ValueError, TypeError, OverflowError):
        return None


def _described(description, character_set, label=None):
    """The output's SeriesDescription: the source's + " " + label (the volume of a split series: a b-value, ASL
    control or label) + DESCRIPTION_SUFFIX, the source's cut so that the whole fits LO's 64 bytes in the dataset's
    character set (a character of a multi-byte set counts for 2-4)."""
    encodings = pydicom.charset.convert_encodings(character_set or ["ISO_IR 6"])
    suffix = (f" {label}" if label else "") + DESCRIPTION_SUFFIX
    while description and len(pydicom.charset.encode_string(description + suffix, encodings)) > 64:
        description = description[:-1]
    return description + suffix


def _offset_number(number):
    """The source's SeriesNumber + SERIES_NUMBER_OFFSET, or + 1 where that leaves the IS range (2^31 - 1), or 1
    at its very top."""
    for offset in (SERIES_NUMBER_OFFSET, 1):
        if number + offset <= IS_MAX:
            return number + offset
    return 1


def _image_type(value, enhanced=False):
    """DERIVED\\SECONDARY followed by the original values after the first two (e.g. M\\FFE); DERIVED\\PRIMARY
    for enhanced MR objects, whose value 2 may only be PRIMARY and which need all four values (PS3.3 C.8.16.1:
    Image Flavor and Derived Pixel Contrast; a source without them gets OTHER and NONE)."""
    if value is None:
        original = []
    elif isinstance(value, str):
        original = [value]
    else:
        original = list(value)
    values = ["DERIVED", "PRIMARY" if enhanced else "SECONDARY"] + [str(v) for v in original[2:]]
    return values + ["OTHER", "NONE"][len(values) - 2:] if enhanced and len(values) < 4 else values


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
        # Type 2: empty when the source has no UID to reference
        derivation.SourceImageSequence = Sequence([_source_reference(source_class, source_sop, number)]
                                                  if source_sop else [])
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
    enhance.py skip it (kinds.written_by_enhance); free of the standard attributes an anonymizer rewrites."""
    block = ds.private_block(ENHANCE_PRIVATE_GROUP, ENHANCE_PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", "enhance.py output")
    block.add_new(0x02, "LO", f"model sha256 {enhancer.model_sha} config {enhancer.config_hash}"[:64])


def derived_dataset(header, pixels, new_series_uid, frame_numbers, enhancer, created, series_number=None,
                    source_key="", study_uid=None, label=None, lossy=None):
    """The output object for one input file.

    header: the input's dataset without pixel data (dcmread stop_before_pixels). pixels: stored values, (rows,
    cols) or (frames, rows, cols) in the cell dtype. frame_numbers: 1-based frame numbers for a multi-frame input
    (None for a single frame). series_number: the output SeriesNumber (default: the source's + 1000).
    source_key: what names the input file when it has no SOPInstanceUID, in its dataset or its file meta (the
    index's fallback), so that every output file gets its own UID. study_uid: the StudyInstanceUID written when
    the input has none (Type 1). label: the volume of a split series (a b-value, ASL control or label), for the
    description (index.Series.volume). lossy: how the input's pixel data lost information
    (pixels.lossy_method), if it did: an output decoded from it keeps the mark (PS3.3 C.7.6.1.1.5: once lossy
    compressed, LossyImageCompression "01" for good). Returns a Dataset with file_meta, ready for save_as(enforce_file_format=True).
    """
    big_endian = header.original_encoding[1] is False
    ds = _portable_copy(header, swap=big_endian)
    meta = getattr(header, "file_meta", None) or {}
    source_sop = str(header.get("SOPInstanceUID", "") or meta.get("MediaStorageSOPInstanceUID", ""))
    source_class = str(header.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", ""))
    enhanced = source_class in ENHANCED_MR_CLASSES or "PerFrameFunctionalGroupsSequence" in header
    sop_uid = derived_uid(new_series_uid, source_sop or source_key)
    for keyword in STALE_TAGS:
        if keyword in ds:
            delattr(ds, keyword)
    if not str(ds.get("StudyInstanceUID", "") or "") and study_uid:
        ds.StudyInstanceUID = study_uid
    # Classic MR only (General Image module, Type 3): in Enhanced MR the attribute is Type 1 with a ratio this
    # header cannot give, and a valid enhanced source already carries all three, copied as they are.
    if lossy and not enhanced and str(ds.get("LossyImageCompression", "")) != "01":
        ds.LossyImageCompression = "01"
        if not ds.get("LossyImageCompressionMethod"):
            ds.LossyImageCompressionMethod = lossy

    ds.SOPInstanceUID = sop_uid
    ds.SOPClassUID = source_class  # same IOD as the input: viewers treat the output like the source
    ds.SeriesInstanceUID = new_series_uid
    ds.SeriesNumber = (_offset_number(int(header.get("SeriesNumber") or 0)) if series_number is None
                       else series_number)
    ds.SeriesDescription = _described(text_value(header.get("SeriesDescription")), ds.get("SpecificCharacterSet"),
                                      label)
    ds.ImageType = _image_type(header.get("ImageType"), enhanced)
    # The pixels are new: the instance and its content date from now (PS3.3 C.12.1 and C.7.6.1 / C.7.6.16).
    date, time_ = created.strftime("%Y%m%d"), created.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time_
    ds.ContentDate, ds.ContentTime = date, time_
    derivation = (
        f"{ENHANCE_DERIVATION_PREFIX} ({enhancer.name}, model file {enhancer.model_path.name} sha256 "
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
        if "PerFrameFunctionalGroupsSequence" in ds:
            _add_derivation_per_frame(ds, source_class, source_sop, frame_numbers or [1], derivation)
            if source_sop:  # required once a frame references a source, and not allowed otherwise
                ds.SourceImageEvidenceSequence = _source_evidence(header, source_class, source_sop)
        else:
            # A source without per-frame functional groups (malformed: the IOD requires them) gets none: groups
            # that held only the derivation would lack every macro the IOD asks of a frame, errors the source does
            # not have, and without them no standard attribute may reference the source. ImageType DERIVED and
            # ContributingEquipmentSequence say what was done; the private block names the source instance.
            ds.private_block(ENHANCE_PRIVATE_GROUP, ENHANCE_PRIVATE_CREATOR).add_new(0x03, "UI", source_sop or "")
    else:
        # Classic MR: General Image module (PS3.3 C.7.6.1) carries the derivation and the source references.
        ds.DerivationDescription = derivation
        ds.DerivationCodeSequence = Sequence([_code_item(*DERIVATION_SMOOTHING)])
        if source_sop:  # an input without a UID cannot be referenced (Type 1 in the reference macro); no frame
            # numbers: they may only reference a multi-frame SOP class, which MR Image Storage is not, whatever
            # NumberOfFrames a source wrote
            ds.SourceImageSequence = Sequence([_source_reference(source_class, source_sop, None)])

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
    return pixels.open_dataset(path, stop_before_pixels=True)


def _pixel_layout(header):
    """(BitsAllocated, BitsStored, signed) of a header, with the checks writing needs."""
    bits_allocated = int(header.get("BitsAllocated") or 16)
    bits_stored = int(header.get("BitsStored") or bits_allocated)
    signed = int(header.get("PixelRepresentation") or 0) == 1
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
    series declares padding. modality: the source values (n, H, W) as read_series returns them. The index saw
    every header: a series none of whose files declares padding costs no second read."""
    if not series.padded:
        return None
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
    0001.dcm ... in the order of their first slice in the series. Returns (files written, pixels clipped to the
    stored range: to_stored)."""
    files, clipped = {}, 0
    for k, (path, frame) in enumerate(series.frames):
        files.setdefault(path, []).append((k, frame))
    for number, (path, items) in enumerate(files.items(), start=1):
        header = _read_header(path)
        bits_allocated, bits_stored, signed = _pixel_layout(header)
        index = [k for k, _ in items]
        stored, n_clipped = to_stored(modality[index], [series.slopes[k] for k in index],
                                      [series.intercepts[k] for k in index], bits_stored, bits_allocated, signed)
        clipped += n_clipped
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
        try:
            ds = derived_dataset(header, pixels, new_series_uid, frame_numbers, enhancer, created, series_number,
                                 source_key=series.sop_instance_uids[index[0]],
                                 study_uid=series.study_uid or derived_uid("study", series.patient_id),
                                 label=series.volume, lossy=lossy_method(path, header))
            ds.save_as(folder / f"{number:04d}.dcm", enforce_file_format=True)
        except (ValueError, OverflowError) as error:  # a source header value no VR of its own can hold
            raise SeriesError("write failed", f"{path}: {type(error).__name__}: {error}") from None
    return len(files), clipped


def output_series_numbers(series_list, taken_by_outputs=None, numbered=None):
    """{source series id (index.Series.id): output SeriesNumber}: the source's + 1000, moved up past every number
    already used in the same study (by the series of the input tree, by enhanced series already in the output
    folder, taken_by_outputs {study uid: numbers}, and by outputs numbered before it), so a viewer never shows two
    series of one study under one number (nor two volumes of a split series). numbered: the ids to number (default
    all; a series whose output exists already keeps the number it has)."""
    taken = {study: set(numbers) for study, numbers in (taken_by_outputs or {}).items()}
    for s in series_list:
        taken.setdefault(s.study_uid, set()).add(int(s.series_number or 0))
    numbers = {}
    for s in series_list:
        if numbered is not None and s.id not in numbered:
            continue
        number = _offset_number(int(s.series_number or 0))
        while number in taken[s.study_uid]:
            number = number + 1 if number < IS_MAX else 1
        taken[s.study_uid].add(number)
        numbers[s.id] = number
    return numbers
