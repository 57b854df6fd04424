"""Pixels of an indexed series in modality units, and the noise-free truth the demo generator leaves beside them.

pixel_status checks one file's pixel data element as the index reads headers (present, complete, of integers, no
longer than its header says); read_series decodes each file once (pydicom's handlers, pylibjpeg for compressed
syntaxes) and applies the modality rescale per frame; read_truth reads the demo's hidden sidecars (TRUTH_FILE, TRUTH_INDEX), which real
data never has. Problems a series can have are SeriesReadError(reason, detail): callers count the reason and go on.
"""

import itertools
import json
import struct
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from breastmri.dicom.dynamics import member_series
from breastmri.dicom.headers import text_value

# The noise-free truth of a demo DCE series: hidden sidecars in its folder (simulate.demo_dicom.write_truth).
TRUTH_FILE, TRUTH_INDEX = ".demo_truth.npy", ".demo_truth.json"



def open_dataset(path, stop_before_pixels=False):
    """pydicom.dcmread(path, force=True) with a transfer syntax always stated: a file written without file meta
    (no preamble, no group 0002, as old exports are) or whose meta lacks (0002,0010) is read in the encoding pydicom
    found, which then becomes its TransferSyntaxUID, so its pixels decode like any other file's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    if "TransferSyntaxUID" not in (getattr(ds, "file_meta", None) or {}):
        implicit, little = ds.original_encoding
        if getattr(ds, "file_meta", None) is None:
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit is not False else
                                          ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
    return ds


_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}  # Pixel / Float / Double Float Pixel Data
# Float and Double Float Pixel Data (PS3.3 C.7.6.24, parametric maps and other derived objects): enhance.py writes
# stored integers through the source's rescale and could not give such a file back, so it is skipped everywhere.
_FLOAT_PIXEL_TAGS = {(0x7FE0, 0x0008), (0x7FE0, 0x0009)}
FLOAT_PIXELS_REASON = "float pixel data"
# Pixel data longer than Rows x Columns x frames x BitsAllocated describe (the header misstates it).
LENGTH_REASON = "pixel data longer than the header describes"
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"UT", b"UC", b"UR", b"SQ", b"SV", b"UV"}

INVALID_RESCALE = "invalid rescale"  # the writer's reason too
VALUES_ABOVE_BITS_STORED = "stored values above BitsStored"


class SeriesReadError(Exception):
    """A series whose pixels cannot be read as one stack; `reason` is the short counted skip reason."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason




# --------------------------------------------------------------------------------------------------------------
# 2-5. Pixels, normalization, geometry
# --------------------------------------------------------------------------------------------------------------

def pixel_status(fp, ds, file_size):
    """None if the pixel data element is present and complete, else "no pixel data", "truncated",
    FLOAT_PIXELS_REASON or LENGTH_REASON (the index's check of each file; only the element's header and, for
    compressed data, its items' headers are read).
    fp must stand where stop_before_pixels left it (at the pixel data tag, or at the end of the file)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return None  # the file position is meaningless in a deflated stream; the pixel read will tell
    implicit, little = ds.original_encoding
    if implicit is None:
        return None
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:  # nothing after the header, or the file ends inside the next element's tag and length
        return "truncated" if head else "no pixel data"
    endian = "<" if little else ">"
    tag = struct.unpack(endian + "HH", head[:4])
    if tag not in _PIXEL_TAGS:
        return "no pixel data"
    if tag in _FLOAT_PIXEL_TAGS:
        return FLOAT_PIXELS_REASON
    if implicit:
        (length,), header = struct.unpack(endian + "L", head[4:8]), 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            return "truncated"
        (length,), header = struct.unpack(endian + "L", head[8:12]), 12
    else:
        (length,), header = struct.unpack(endian + "H", head[6:8]), 8
    available = file_size - start - header
    if length == 0xFFFFFFFF:  # encapsulated (compressed): a basic offset table item, then the fragments
        return _fragments_status(fp, start + header, file_size)
    if length == 0:
        return "no pixel data"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = int(ds.Rows) * int(ds.Columns) * frames * int(ds.BitsAllocated) // 8
    if available < length or length < expected:
        return "truncated"
    if length > expected + expected % 2:  # more data than the header describes: its matrix or bits are wrong
        return LENGTH_REASON
    return None


def _fragments_status(fp, offset, file_size):
    """None when the items of encapsulated pixel data from `offset` (the offset table, then at least one fragment)
    lie within the file, "truncated" when the file ends before one does (a download cut short) or holds fewer than
    two: only the item headers are read (_items)."""
    count = 0
    for count, (_, end) in enumerate(_items(fp, offset), start=1):
        if end > file_size:
            return "truncated"
    return None if count >= 2 else "truncated"


def _items(fp, offset):
    """(start, end) of the value of each item of encapsulated pixel data from `offset` (the Basic Offset Table, then
    the fragments), read from their 8-byte headers (little endian, as encapsulation is), up to the sequence
    delimiter, anything else or the end of the file."""
    for _ in range(1_000_000):
        fp.seek(offset)
        head = fp.read(8)
        if len(head) < 8 or head[:4] != b"\xfe\xff\x00\xe0":
            return
        start = offset + 8
        offset = start + int.from_bytes(head[4:8], "little")
        yield start, offset


def read_series(series):
    """float32 (n, rows, cols) in modality units: stored values * RescaleSlope + RescaleIntercept, per frame.

    Each file is decoded once (all its frames), through pydicom's pixel handlers (pylibjpeg plugins for
    JPEG 2000, JPEG-LS, JPEG lossless; RLE). Raises SeriesReadError("mismatched shapes") when a decoded image
    does not have the series' matrix, ("pixel read failed") when a rescale gives values that are not finite;
    decoder errors propagate (the caller counts them as a skipped series)."""
    out = np.empty((len(series.frames), series.rows, series.cols), dtype=np.float32)
    slots = defaultdict(list)
    for k, (path, frame) in enumerate(series.frames):
        slots[path].append((k, frame))
    for path, items in slots.items():
        with warnings.catch_warnings():  # decoders warn too
            warnings.simplefilter("ignore")
            dataset = open_dataset(path)
            pixels = dataset.pixel_array
        _check_unused_bits(dataset)
        if pixels.ndim == 2:
            pixels = pixels[None]
        if pixels.ndim != 3 or pixels.shape[1:] != (series.rows, series.cols):
            raise SeriesReadError("mismatched shapes", f"{path} decodes to {pixels.shape}, series is "
                                  f"{series.rows}x{series.cols}")
        for k, frame in items:
            out[k] = pixels[frame or 0]
    slopes = np.asarray(series.slopes, dtype=np.float32)
    intercepts = np.asarray(series.intercepts, dtype=np.float32)
    if np.any(slopes == 0):  # every value would read 0; enhance.py could not write it back either
        raise SeriesReadError(INVALID_RESCALE, "RescaleSlope 0")
    if len(slopes) == len(out) and (np.any(slopes != 1) or np.any(intercepts != 0)):
        out *= slopes[:, None, None]
        out += intercepts[:, None, None]
    if not np.all(np.isfinite(out)):  # e.g. RescaleSlope "NaN", which pydicom parses
        raise SeriesReadError("pixel read failed", "non-finite values after rescale")
    return out


# LossyImageCompressionMethod (PS3.3 C.7.6.1.1.5) of the transfer syntaxes that always lose information (JPEG's
# DCT processes), and of those that may or may not, which only their codestream tells: JPEG 2000 (and High
# Throughput JPEG 2000) by the wavelet of its COD marker segment (0: the irreversible 9/7), JPEG-LS by the NEAR
# parameter of its start of scan (above 0: near-lossless, i.e. lossy).
LOSSY_SYNTAXES = {"1.2.840.10008.1.2.4.50": "ISO_10918_1", "1.2.840.10008.1.2.4.51": "ISO_10918_1"}
MAYBE_LOSSY = {"1.2.840.10008.1.2.4.91": "ISO_15444_1", "1.2.840.10008.1.2.4.203": "ISO_15444_15",
               "1.2.840.10008.1.2.4.81": "ISO_14495_1"}
_CODESTREAM_HEAD = 4096  # bytes of the first fragment read: the main header of either codestream is shorter


def lossy_method(path, header=None):
    """The LossyImageCompressionMethod of the file's pixel data ("ISO_10918_1", "ISO_15444_1", ...) when its
    encoding lost information (LOSSY_SYNTAXES, MAYBE_LOSSY), or when the file says it was lossy compressed before
    (LossyImageCompression 01: its method, else "lossy"); else None. header: the file's dataset without pixel data,
    when the caller has read it: the file is then opened again only for a codestream that may be lossy. A reversible
    JPEG 2000 codestream cut short by rate control is lossy too and not told apart."""
    header = open_dataset(path, stop_before_pixels=True) if header is None else header
    syntax = str((getattr(header, "file_meta", None) or {}).get("TransferSyntaxUID", ""))
    if syntax in LOSSY_SYNTAXES:
        return LOSSY_SYNTAXES[syntax]
    if syntax in MAYBE_LOSSY and _lossy_codestream(path, syntax):
        return MAYBE_LOSSY[syntax]
    if str(header.get("LossyImageCompression", "") or "").strip() == "01":
        return text_value(header.get("LossyImageCompressionMethod")) or "lossy"
    return None


def _lossy_codestream(path, syntax):
    """Whether the first fragment's codestream (MAYBE_LOSSY) lost information; False when it cannot be read (the
    pixel read then says why)."""
    with open(path, "rb") as fp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmread(fp, stop_before_pixels=True, force=True)  # to the pixel data element
        head = fp.read(12)  # Pixel Data: tag, OB, 0000, undefined length; then its items
        fragments = list(itertools.islice(_items(fp, fp.tell()), 2)) if head[8:12] == b"\xff\xff\xff\xff" else []
        if len(fragments) < 2:  # the Basic Offset Table, then the first fragment
            return False
        start, end = fragments[1]
        fp.seek(start)
        stream = fp.read(min(end - start, _CODESTREAM_HEAD))
    if syntax == "1.2.840.10008.1.2.4.81":
        at = stream.find(b"\xff\xda")  # start of scan: length (2), components Ns (1), 2 Ns bytes, then NEAR
        near = at + 5 + 2 * stream[at + 4] if 0 <= at and at + 4 < len(stream) else len(stream)
        return near < len(stream) and stream[near] > 0
    at = stream.find(b"\xff\x52")  # COD: length (2), Scod, order, layers (2), MCT, levels, block w, h, style,
    return 0 <= at and at + 13 < len(stream) and stream[at + 13] == 0  # then the wavelet (0: irreversible 9/7)


def _check_unused_bits(dataset):
    """Raise SeriesReadError when uncompressed, unsigned stored values reach above BitsStored and no overlay is
    embedded there: decoders mask those bits off (right for an old overlay plane, wrong for a mislabelled
    export, whose image they would silently change)."""
    allocated, stored = int(dataset.BitsAllocated), int(dataset.get("BitsStored", dataset.BitsAllocated))
    if stored >= allocated or allocated not in (8, 16) or int(dataset.get("PixelRepresentation", 0)) \
            or dataset.file_meta.TransferSyntaxUID.is_compressed or "PixelData" not in dataset:
        return
    if any(element.tag.element == 0x0102 and 0x6000 <= element.tag.group <= 0x601E for element in dataset):
        return  # an overlay embedded in the unused bits (retired; old GE exports still write it)
    endian = "<" if dataset.file_meta.TransferSyntaxUID.is_little_endian else ">"
    raw = np.frombuffer(dataset.PixelData, dtype=f"{endian}u{allocated // 8}")
    if np.any(raw >> stored):
        raise SeriesReadError(VALUES_ABOVE_BITS_STORED, f"values above {stored} bits")


def read_truth(series):
    """The noise-free truth of a series, float32 (n, rows, cols) in modality units and in the series' slice
    order, or None. Only the demo generator knows it: demo_data.write_truth leaves TRUTH_FILE (the images) and
    TRUTH_INDEX (their SOPInstanceUIDs) next to the DICOM files. Real data has no such files; a sidecar that does
    not cover every image of the series, or does not match its matrix, is ignored rather than half used."""
    if series.dynamic:  # assembled from series stored one per time point: each member has its own sidecar
        parts = [read_truth(member_series(series, m)) for m in series.dynamic["members"]]
        return None if any(p is None for p in parts) else np.concatenate(parts)
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
