"""The index's first half: a tree's files listed and each file's header read, or its counted reason to be skipped.

    paths = list_files(root, exclude=None, skips=skips)     # hidden files and unlistable folders counted in skips
    record = scan_file(path, include_kinds=())              # a header record (dict) or a skip reason (str)

index.py groups the records into series. Only headers are read, and only the 8-12 bytes of the pixel data element
header, which tell whether the file holds all of it (pixels.pixel_status).
"""

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from tqdm import tqdm

from breastmri.dicom.headers import _header_record
from breastmri.dicom.kinds import _kind_reason
from breastmri.dicom.pixels import lossy_method, pixel_status

# MR image storage SOP classes we turn into slices (PS3.4 Annex B). Enhanced MR Color, MR Spectroscopy and
# Raw Data are MR too but carry no grayscale image and are skipped with their SOP class as the reason.
MR_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}

# Pixel data the header misstates: bits above HighBit (the pixel element's own checks: pixels.pixel_status).
BIT_LAYOUT_REASON = "HighBit is not BitsStored - 1"

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


HIDDEN_REASON = "hidden file (name starts with '.')"
UNLISTABLE_REASON = "folder that cannot be listed"


def list_files(root, exclude=None, skips=None):
    """Every regular file under root in a stable (sorted) order. Hidden files and the files of hidden folders
    (".name": .DS_Store, AppleDouble "._" copies, the demo's truth files, a killed run's temporary folders) are not
    read but counted in `skips` (HIDDEN_REASON), and so is each folder that cannot be listed (UNLISTABLE_REASON,
    one per folder: its files cannot be counted); `exclude` (the output folder, if it lies inside the tree) is left
    out. Linked folders are followed (an archive of links to patient folders), each real folder once, so a link
    back up the tree ends there."""
    root, files = Path(root), []
    skips = skips if skips is not None else Skips()
    exclude = Path(exclude).resolve() if exclude is not None else None
    visited = {Path(root).resolve()}

    def unlistable(error):
        skips.add_file(UNLISTABLE_REASON, str(error.filename))

    for folder, dirs, names in os.walk(root, followlinks=True, onerror=unlistable):
        kept = []
        for d in sorted(dirs):
            where = Path(folder, d).resolve()
            if where == exclude or where in visited:
                continue
            visited.add(where)
            if d.startswith("."):
                for hidden_folder, _, hidden in os.walk(Path(folder, d), onerror=unlistable):
                    for n in hidden:
                        skips.add_file(HIDDEN_REASON, os.path.join(hidden_folder, n))
            else:
                kept.append(d)
        dirs[:] = kept
        for n in sorted(names):
            if n.startswith("."):
                skips.add_file(HIDDEN_REASON, os.path.join(folder, n))
            else:
                files.append(os.path.join(folder, n))
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
            if _cut_short(ds, size):
                return "truncated"
            reason = _skip_reason(ds) or _kind_reason(ds, include_kinds)
            if reason:
                return reason
            reason = pixel_status(fp, ds, size)
            if reason:
                return reason
            return dict(_header_record(path, ds), lossy=lossy_method(path, ds))
    except InvalidDicomError:
        return "not DICOM"
    except Exception:  # noqa: BLE001 - any parser failure of one file is a counted skip, never a crash
        return "unreadable"


def _cut_short(ds, size):
    """Whether the file ends inside its header: before the end its file meta group declares, or inside the value of
    the last element read (pydicom reads what is there without a word, so a SOPClassUID cut mid-value read as a
    made-up SOP class, and a header cut before Modality as "modality missing")."""
    meta = getattr(ds, "file_meta", None) or {}
    if not meta and not ds.keys():  # "DICM" and nothing readable after it
        return True
    group_length = meta.get("FileMetaInformationGroupLength")
    if group_length is not None and size < 132 + 12 + int(group_length):  # preamble, DICM, the group length itself
        return True
    last = max(ds.keys(), default=None)
    raw = ds.get_item(last) if last is not None else None
    return isinstance(raw, pydicom.dataelem.RawDataElement) and raw.value is not None \
        and raw.length != 0xFFFFFFFF and len(raw.value) < raw.length


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
    stored, high, allocated = (int(ds.get(key, 0) or 0) for key in ("BitsStored", "HighBit", "BitsAllocated"))
    if "BitsStored" in ds and "HighBit" in ds and (high != stored - 1 or stored > allocated):
        return BIT_LAYOUT_REASON  # decoders read the low BitsStored bits: values stored higher up would read wrong
    return None


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
