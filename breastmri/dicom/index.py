"""Step 1 of preprocessing, also what enhance.py walks a tree with: index a DICOM tree by its headers only.

    series_list, skips, files_seen = index("path/to/dicom", series_filter="", include_kinds=())

Every file's header is read (scan.py: no pixel data, only the 8-12 bytes of the pixel data element header, which
tell whether the file holds all of it). MR image objects (MR, Enhanced MR, Legacy Converted Enhanced MR) are grouped into series
by SeriesInstanceUID; everything else (CT, PT, SEG, SR, presentation states, MR spectroscopy, colour, non-DICOM,
truncated or unreadable files) is skipped with a counted reason, never stopping the run. So is every MR image that
is not magnitude anatomy (image_kinds: phase, real and imaginary images, parametric maps, localizers, subtractions,
projections, Siemens mosaics) unless include_kinds names its kind, and every object enhance.py wrote
(written_by_enhance). A regex on SeriesDescription (series_filter) can narrow the series.

Slice order within a series (slice_index, the first array axis) is by
(temporal position, position along the slice normal, InstanceNumber, file, frame): the temporal position is
TemporalPositionIdentifier (classic MR) or TemporalPositionIndex (enhanced MR); when it is missing and several
images share a slice position (a DCE series without the tag), they are ranked by AcquisitionTime (then
TriggerTime where it varies at a position, AcquisitionNumber, InstanceNumber): among the series' phases when every
phase's time is shared by all positions (a 3-D acquisition; a missing image then leaves a hole, noted), else at
each position. So a DCE series is stored time point by time point, each time point as a spatially ordered stack.

A series that holds several kinds of image at each slice position is split into one Series per kind (`volume`), as
a scanner that stores each kind apart gives them, so that no temporal model reads one kind as the next time point of
another: a diffusion series into one per b-value ("b=800"; from DiffusionBValue or the vendor's private element,
headers._b_value), an arterial spin labelling source series into its label and its control images ("label",
"control"; ASL Context or Philips' Label Type, headers._asl_context), each a series of repeated acquisitions of one
anatomy. enhance.py writes one enhanced series per volume.
"""

import hashlib
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from breastmri.config import ConfigError
from breastmri.dicom.kinds import check_include_kinds
from breastmri.dicom.pixels import TRUTH_FILE, open_dataset
from breastmri.dicom.scan import Skips, _scan_all, list_files

# A series whose images lie in different planes (a three-plane localizer / survey in one series) cannot be one
# stack; counted separately from an image marked LOCALIZER, as it is recognized by geometry, not by a tag.
MIXED_PLANES_REASON = "localizer (image orientations differ)"
# Several images at one slice position and time point (water and fat of a Dixon dynamic, the echoes of a multi-echo
# series, a temporal tag that does not tell the dynamics apart and equal acquisition times): no (time, position)
# layout tells them apart, so a context model would read one as the other's neighbour.
REPEATED_POSITION_REASON = "repeated slice position at one time point"
# A multi-frame object holding several volumes (module docstring: b-values, or ASL label and control images): it
# cannot be split (enhance.py writes an object back whole), and read whole its volumes would be taken for time points.
DIFFUSION_OBJECT_REASON = "several b-values in one multi-frame object"
# A series whose images mix those with a slice position and those without one: the latter cannot be placed among
# the former (numbered on their own, they would land on positions the others hold).
PARTLY_PLACED_REASON = "slice position missing on some images"
# One SeriesInstanceUID (or, without one, one folder) whose files belong to several patients or studies: a broken
# export or anonymization; merged, one patient's images would join another's series and cross the patient split.
SHARED_UID_REASON = "one series UID for several patients or studies"
ASL_OBJECT_REASON = "ASL label and control images in one multi-frame object"
# Two files of one SOPInstanceUID whose pixel data differ (an image sent again after an edit, or damaged): which one
# is the image cannot be told, so the series is skipped. Identical copies are counted as "duplicate SOP instance".
CONFLICTING_DUPLICATE_REASON = "one SOP instance UID for different pixel data"
# A time series some of whose (time point, slice position) images are missing (unreadable, not exported): the others
# keep their places, and a context there takes the target frame in the missing time point's place
# (context.position_frames).
MISSING_IMAGES_NOTE = "images missing at some time points of some slice positions"
VOLUME_SEPARATOR = "#"  # the Series.id of one volume of a split series: "<SeriesInstanceUID>#<volume>"
ORIENTATION_TOLERANCE = 0.01  # largest difference of direction cosines within one plane (~0.6 degrees)
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
    times: list = field(default_factory=list)  # acquisition time of each frame, s (None where the header has none)
    series_number: int = 0
    field_strength_t: float = None
    n_files: int = 0
    notes: list = field(default_factory=list)  # fallbacks used for missing tags
    truth_dir: str = None  # folder holding a noise-free truth sidecar (demo data only; see read_truth)
    padded: bool = True  # some file declares PixelPaddingValue (writer.padding_mask reads them only then)
    # protocol and geometry of the series (dynamics.acquisition_key compares them across series), and the earliest
    # time tags of its images (dynamics orders the series of a dynamic by them)
    acquisition: dict = field(default_factory=dict)
    start: dict = field(default_factory=dict)
    # a dynamic assembled from series stored one per time point (dynamics.assemble_dynamics): its id, the tag that
    # ordered the members, and per member series its uid, number, description, folder of truth and frame range
    dynamic: dict = None
    volume: str = None  # "b=800", "control": which volume of a split series this is (module docstring), else None

    @property
    def id(self):
        """What tells this series apart from every other of a tree: its SeriesInstanceUID (a dynamic's id), and
        for one volume of a split series (a b-value, ASL control or label images) that volume too (the manifest's
        series_uid column)."""
        return self.series_uid if self.volume is None else f"{self.series_uid}{VOLUME_SEPARATOR}{self.volume}"


# --------------------------------------------------------------------------------------------------------------
# 1. Header records into series
# --------------------------------------------------------------------------------------------------------------

def _owners_differ(files):
    """True when the header records name more than one patient (PatientID or PatientName; ids made up from a
    study or folder are not compared) or more than one StudyInstanceUID."""
    patients = {r["patient_id"] for r in files if "patient_id from study/folder" not in r["notes"]}
    studies = {r["study_uid"] for r in files if r["study_uid"]}
    return len(patients) > 1 or len(studies) > 1


def _orientations_differ(frames):
    """True when the frames' ImageOrientationPatient differ by more than ORIENTATION_TOLERANCE (frames without
    one are not compared)."""
    orientations = [f["orientation"] for f in frames if f.get("orientation") is not None]
    if len(orientations) < 2:
        return False
    values = np.asarray(orientations, float)
    return bool(np.max(np.abs(values - values[0])) > ORIENTATION_TOLERANCE)


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
        if record.get("lossy"):  # its values are not the scanner's: preprocessing's summary counts the note
            notes.append(f"lossy compressed source ({record['lossy']})")
        record["notes"] = notes
        groups[record["series_uid"]].append(record)

    series_list = []
    for uid, files in groups.items():
        first = files[0]
        frames, seen, duplicates = [], {}, []
        for record in files:
            keys = [(record["sop_uid"], f["frame"] or 0) for f in record["frames"]]  # NumberOfFrames 1 or none
            kept = next((seen[k] for k in keys if k in seen), None)
            if kept is not None:
                duplicates.append((record["path"], _same_pixels(kept, record["path"])))
                continue
            seen.update(dict.fromkeys(keys, record["path"]))
            frames.extend(dict(f, path=record["path"], sop_uid=record["sop_uid"], rows=record["rows"],
                               cols=record["cols"]) for f in record["frames"])
        n_files = len({f["path"] for f in frames})
        if not all(same for _, same in duplicates):
            skips.add_series(CONFLICTING_DUPLICATE_REASON, n_files + len(duplicates),
                             next(path for path, same in duplicates if not same))
            continue
        for path, _ in duplicates:
            skips.add_file("duplicate SOP instance", path)
        if len({(f["rows"], f["cols"]) for f in frames}) > 1:
            skips.add_series("mismatched shapes", n_files, f"series {uid}")
            continue
        if "localizer" not in include_kinds and _orientations_differ(frames):
            skips.add_series(MIXED_PLANES_REASON, n_files, f"series {uid} ({first['series_description']})")
            continue
        if _owners_differ(files):
            skips.add_series(SHARED_UID_REASON, n_files, f"series {uid} ({first['series_description']})")
            continue
        if len({f["position"] is None for f in frames}) > 1:
            skips.add_series(PARTLY_PLACED_REASON, n_files, f"series {uid} ({first['series_description']})")
            continue
        volumes = _volumes(frames)
        if isinstance(volumes, str):
            skips.add_series(volumes, n_files, f"series {uid} ({first['series_description']})")
            continue
        if not all(_assign_temporal(part) for _, part in volumes):
            skips.add_series(REPEATED_POSITION_REASON, n_files, f"series {uid} ({first['series_description']})")
            continue
        by_path = {r["path"]: r for r in files}
        for volume, part in volumes:
            series_list.append(_series(uid, [by_path[p] for p in dict.fromkeys(f["path"] for f in part)], part,
                                       volume))
    series_list.sort(key=lambda s: (s.patient_id, s.study_uid, s.series_number, s.series_uid))  # stable: b order
    return series_list


def volume_of(series_id):
    """The volume named in a Series.id (a manifest's series_uid), "" for a series that was not split."""
    return series_id.partition(VOLUME_SEPARATOR)[2]


def _series(uid, files, frames, volume):
    """The Series of one uid (and `volume` of a split series, or None) from its header records and frames (with
    "t")."""
    first = files[0]
    frames.sort(key=lambda f: (f["t"], f["position"] if f["position"] is not None else 0.0, f["instance"],
                               f["path"], f["frame"] or 0))
    starts = {key: [r["times"][key] for r in files if r["times"][key] is not None] for key in first["times"]}
    acquisition = dict(first["acquisition"], rows=first["rows"], cols=first["cols"],
                       orientation=frames[0]["orientation"],
                       positions=tuple(sorted({_position_key(f["position"]) for f in frames
                                               if f["position"] is not None})))
    for key in ("b_value", "asl"):  # one throughout: part of the acquisition (dynamics.acquisition_key)
        values = {f.get(key) for f in frames}
        acquisition[key] = values.pop() if len(values) == 1 else None
    layout = _layout(frames)
    return Series(
        acquisition=acquisition, start={key: min(values) if values else None for key, values in starts.items()},
        patient_id=first["patient_id"], study_uid=first["study_uid"], series_uid=uid,
        series_description=first["series_description"], modality="MR", rows=first["rows"],
        cols=first["cols"], frames=[(f["path"], f["frame"]) for f in frames],
        sop_instance_uids=[f["sop_uid"] for f in frames], slopes=[f["slope"] for f in frames],
        intercepts=[f["intercept"] for f in frames], temporal_index=[f["t"] for f in frames],
        times=[f["time"] for f in frames], layout=layout,
        series_number=first["series_number"],
        field_strength_t=next((r["field_strength_t"] for r in files if r["field_strength_t"]), None),
        padded=any(r["padded"] for r in files),
        n_files=len(files), notes=sorted({n for r in files for n in r["notes"]} | _missing_images(layout)),
        truth_dir=first["folder"] if (Path(first["folder"]) / TRUTH_FILE).is_file() else None, volume=volume)


def _volumes(frames):
    """[(volume, frames)]: one per kind of image (module docstring) when the frames at one slice position differ in
    b-value or ASL context; else [(None, frames)]. In increasing b-value (images without one, as some vendors leave
    the b=0 images, first: "b=unknown"), then control, label, m_zero_scan and images without a label ("unknown").
    The reason to skip the series when a multi-frame object holds several volumes."""
    kind_of = [(f["b_value"], f.get("asl")) for f in frames]  # what tells the volumes apart, either None
    kinds = set(kind_of)
    if len(kinds) < 2:
        return [(None, frames)]
    at_position, in_file = defaultdict(set), defaultdict(set)
    for f, kind in zip(frames, kind_of):
        at_position[None if f["position"] is None else _position_key(f["position"])].add(kind)
        in_file[f["path"]].add(kind)
    if max(map(len, at_position.values())) < 2:
        return [(None, frames)]
    mixed = [held for held in in_file.values() if len(held) > 1]
    if mixed:
        return DIFFUSION_OBJECT_REASON if any(len({b for b, _ in held}) > 1 for held in mixed) else ASL_OBJECT_REASON
    split_b, split_asl = (len({kind[i] for kind in kinds}) > 1 for i in (0, 1))

    def name(kind):
        b, asl = kind
        b_name = ("b=unknown" if b is None else f"b={b:g}") if split_b else None
        return " ".join(n for n in (b_name, (asl or "unknown") if split_asl else None) if n)

    def order(kind):
        b, asl = kind
        return -1.0 if b is None else b, _ASL_ORDER.index(asl) if asl in _ASL_ORDER else len(_ASL_ORDER), str(asl)

    return [(name(kind), [f for f, k in zip(frames, kind_of) if k == kind]) for kind in sorted(kinds, key=order)]


_ASL_ORDER = ("control", "label", "m_zero_scan")


def _same_pixels(first, second):
    """Whether two files of one SOPInstanceUID hold the same image (read only for duplicates): the same pixel data
    as stored, or, in two transfer syntaxes (one copy compressed), the same decoded values; True when they cannot
    be read or decoded to tell (no decoder), so the first is kept and the other counted as before."""
    try:
        a, b = open_dataset(first), open_dataset(second)
        if a.get("PixelData") == b.get("PixelData"):
            return True
        if a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID:
            return False
        return bool(np.array_equal(a.pixel_array, b.pixel_array))
    except Exception:  # noqa: BLE001 - a copy that cannot be decoded here: counted as a duplicate, as before
        return True


def _missing_images(layout):
    """{MISSING_IMAGES_NOTE} when the (time, position) grid of a time series has holes, else an empty set."""
    times, positions = {t for t, _ in layout}, {k for _, k in layout}
    return {MISSING_IMAGES_NOTE} if len(times) > 1 and len(set(layout)) < len(times) * len(positions) else set()


def _layout(frames):
    """(time_index, position_index) of each frame in a sorted series: the rank of its temporal position and of
    its position along the slice normal (0.01 mm apart counts as the same), so frame (t, k) of a DCE series can
    be found from any other frame of it. Frames without a position are numbered in order within their time
    point. A series with one time point has time_index 0 throughout."""
    times = sorted({f["t"] for f in frames})
    positions = sorted({_position_key(f["position"]) for f in frames if f["position"] is not None})
    time_rank, position_rank = {t: i for i, t in enumerate(times)}, {p: i for i, p in enumerate(positions)}
    layout, count = [], defaultdict(int)
    for f in frames:
        t = time_rank[f["t"]]
        if f["position"] is None:
            k = count[t]
            count[t] += 1
        else:
            k = position_rank[_position_key(f["position"])]
        layout.append((t, k))
    return layout


def _position_key(position):
    """Slice positions 0.01 mm apart or closer are one position (rounding of exported coordinates)."""
    return round(position, 2)


def _assign_temporal(frames):
    """Set f["t"]: the temporal position tag when every frame has one and it tells the images at each position
    apart; else, when slice positions repeat (DCE without the tag, or with one that never changes), the rank by
    acquisition time, then TriggerTime (GE writes each phase's delay there, its AcquisitionTime may be the
    series' start), then AcquisitionNumber: among the series' phases when each phase's time is shared by every
    position, else among the frames at the same position; else 0. False (nothing to lay
    out) when two frames at one position share all three: images of one dynamic (water and fat, echoes), not two
    time points (REPEATED_POSITION_REASON)."""
    positions = [f["position"] for f in frames]
    if all(f["temporal"] is not None for f in frames):
        for f in frames:
            f["t"] = f["temporal"]
        if None in positions or len({(f["t"], _position_key(f["position"])) for f in frames}) == len(frames):
            return True
    elif None in positions or len({_position_key(p) for p in positions}) == len(positions):
        for f in frames:
            f["t"] = 0
        return True
    at_position = defaultdict(list)
    for f in frames:
        at_position[_position_key(f["position"])].append(f)
    # TriggerTime only where it varies between the images of a position: a series that writes 0 on every image, or
    # one delay per slice, is ordered as without it
    varies = any(len({f["trigger"] for f in group}) > 1 for group in at_position.values())

    def when(f):
        return (f["time"] if f["time"] is not None else math.inf,
                f["trigger"] if varies and f["trigger"] is not None else math.inf, f["acquisition"])

    for group in at_position.values():
        times = [when(f) for f in group if f["time"] is not None or (varies and f["trigger"] is not None)]
        if len(set(times)) < len(times):
            return False
        group.sort(key=lambda f: (when(f), f["instance"], f["path"], f["frame"] or 0))
    # A phase's time shared by every slice position (a 3-D acquisition, or GE's TriggerTime per phase): the rank
    # among the series' phases, so a position that misses an image keeps its later phases in their place; times of
    # each slice its own (a 2-D acquisition): the rank at its position
    phases = {phase: rank for rank, phase in enumerate(sorted({when(f) for f in frames}))}
    if len(phases) == max(len(group) for group in at_position.values()):
        for f in frames:
            f["t"] = phases[when(f)]
    else:
        for group in at_position.values():
            for rank, f in enumerate(group):
                f["t"] = rank
    return True


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


def scan_tree(root, series_filter, pool=None, workers=1, exclude=None, progress=True, include_kinds=()):
    """(series_list, Skips, files_seen): the shared body of index_tree, index and run."""
    include_kinds = check_include_kinds(include_kinds)
    skips, records = Skips(), []
    paths = list_files(root, exclude=exclude, skips=skips)
    listed = sum(skips.files.values())  # hidden files and unlistable folders, counted but not read
    for path, result in zip(paths, _scan_all(paths, pool, workers, progress, include_kinds)):
        if isinstance(result, str):
            skips.add_file(result, path)
        else:
            records.append(result)
    series_list = group_series(records, root, skips, include_kinds)
    series_list = filter_series(series_list, series_filter, skips)
    return series_list, skips, len(paths) + listed


def index(root, series_filter="", include_kinds=(), exclude=None):
    """index_tree with the whole Skips (per-series counts too), as enhance.py reports them."""
    return scan_tree(root, series_filter, exclude=exclude, progress=False, include_kinds=include_kinds)


def index_tree(root, series_filter="", include_kinds=()):
    """Index a DICOM tree by its headers only.

    Returns (series_list, skipped, files_seen): the ordered MR series, a Counter of skipped files per reason
    (series-level reasons such as "series filter" count the files of the series), and the number of files
    looked at. files_seen == sum(skipped.values()) + the files of series_list. include_kinds: IMAGE_KINDS to keep
    (preprocess.include_kinds)."""
    series_list, skips, files_seen = index(root, series_filter, include_kinds)
    return series_list, skips.files, files_seen
