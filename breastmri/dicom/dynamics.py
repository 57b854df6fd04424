"""Dynamics stored one series per time point, assembled into one time series.

    series_list = assemble_dynamics(series_list)        # preprocess.assemble_dynamics: auto

Siemens (TWIST and VIBE dynamics), GE (DISCO) and many archives store a DCE acquisition as one series per time point;
Duke-Breast-Cancer-MRI stores its pre- and post-contrast phases as separate series. Read one by one, each is a
one-frame series and no temporal context can run on it. Series of one study are one dynamic when they share
everything that makes their images comparable frame by frame (acquisition_key): frame of reference, orientation,
the set of slice positions, matrix and pixel spacing, the sequence (ScanningSequence, SequenceName, fat
suppression in ScanOptions, the protocol name without its time token and the series description without it and
without numbers), TR, TE, flip angle and
inversion time (of an enhanced object, from its functional groups), the image type and the b-value. A
variable-flip-angle T1 set (`fl3d_vibe_pre_flip_2deg`, `_5deg`, ...) differs in flip angle and is never merged, nor
are echoes, diffusion series of other b-values or series of another contrast; nor a fat-suppressed series and one
without (ScanOptions FS, or its name), nor the water, fat, in- and opposed-phase series of one Dixon acquisition
(their names or image types): GE's ProtocolName names the whole exam, so the description tells them apart. Only series of a single time point
are merged; a series that is already a time series stays as it is.

The members are ordered by the first tag that orders all of them: TemporalPositionIdentifier is per series and
says nothing across series, so TriggerTime, then AcquisitionTime, then ContentTime, then AcquisitionNumber. The
assembled Series holds every member's frames, member after member, with the member's rank as its time index;
`Series.dynamic` records the members (uid, number, description, frame range), so enhance.py can write one derived
series per source series, as it does for any other series.
"""

import hashlib
import re
from dataclasses import replace

from breastmri.config import ConfigError

MODES = ("auto", "off")
# The tags that can order the members, in the order they are tried (Series.start keys).
ORDER_TAGS = (("trigger_ms", "TriggerTime"), ("acquisition", "AcquisitionTime"), ("content", "ContentTime"),
              ("acquisition_number", "AcquisitionNumber"))
# Time tokens in a protocol name or description: "TT=8.0s" (Siemens TWIST), "12.2s", "ph3", "phase 2", "t=30",
# and Duke-Breast-Cancer-MRI's phases: "ax dyn pre", "ax dyn 1st pass" ... ("pre", "post", "3rd", "2nd_pass";
# bounded by anything but a letter or digit, as names join words with underscores).
TIME_TOKEN = re.compile(r"(TT\s*=\s*)?\d+(\.\d+)?\s*s(ec)?\b|\b(ph|phase|dyn)\s*[=_ -]?\s*\d+\b"
                        r"|(?<![a-z0-9])((pre|post)([\s_-]*\d+)?|\d+(st|nd|rd|th)([\s_]*(pass|phase|post))?)"
                        r"(?![a-z0-9])", re.IGNORECASE)


def check_mode(mode):
    if mode not in MODES:
        raise ConfigError(f"preprocess.assemble_dynamics must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def protocol_name(series):
    """The protocol name (or, without one, the description) without its time token, spaces and separators
    normalized: 'Twist_dynamic_Wip576_TT=8.0s' -> 'twist dynamic wip576'."""
    return _timeless(series.acquisition.get("protocol") or series.series_description)


def _member_name(series):
    """What an assembled dynamic is called: its first member's description without the time token (GE's
    ProtocolName names the exam), else its protocol name so."""
    return _timeless(series.series_description) or protocol_name(series)


def _timeless(text):
    return " ".join(re.split(r"[\s_=\-]+", TIME_TOKEN.sub(" ", text or "").lower())).strip()


def acquisition_key(series):
    """What two series must share to be time points of one dynamic; None for a series that cannot be a member
    (more than one time point, no slice positions to compare, or one volume of a split series)."""
    a = series.acquisition
    if not a or not a.get("positions") or len({t for t, _ in series.layout}) != 1 or series.volume is not None:
        return None  # one volume of a split series (a b-value, control or label images) is not a time point either
    orientation = tuple(round(v, 2) for v in a["orientation"]) if a.get("orientation") else None
    return (series.patient_id, series.study_uid, a.get("frame_of_reference_uid"), orientation, a["positions"],
            a.get("rows"), a.get("cols"), a.get("pixel_spacing"), a.get("scanning_sequence"), a.get("sequence_name"),
            protocol_name(series), description_name(series), a.get("tr_ms"), a.get("te_ms"), a.get("flip_deg"),
            a.get("ti_ms"), a.get("image_type"), fat_suppressed(a.get("scan_options")), a.get("b_value"), a.get("asl"))


def description_name(series):
    """The description without its time token and without numbers ('Ax_DISCO_Ph2', 'Ax VIBRANT 1 min', 'DCE 3'
    -> one name): GE's ProtocolName names the exam, so the description is what keeps a series without fat
    suppression, or a Dixon acquisition's water and fat images, apart from the dynamic. Numbers that do tell
    acquisitions apart (flip angle, echo time, b-value) are compared as such."""
    return " ".join(re.sub(r"\d+", " ", _timeless(series.series_description)).split())


# ScanOptions values of fat suppression (PS3.3 C.8.3.1.1.4: FS; SFS, FAT_SAT as written by some exports). GE's
# FSA_GEMS, FSP_GEMS ... name a direction, not fat saturation.
FAT_SUPPRESSION_OPTIONS = {"FS", "SFS", "FAT_SAT", "FATSAT"}


def fat_suppressed(scan_options):
    """Whether ScanOptions asks for fat suppression (FAT_SUPPRESSION_OPTIONS): the one
    option that makes a pre-contrast series another contrast. Others may differ between the series of one dynamic
    (GE marks its multiphase acquisitions MP_GEMS, a single-phase pre-contrast series not)."""
    options = [o.strip().upper() for o in (scan_options or "").split("\\")]
    return any(o in FAT_SUPPRESSION_OPTIONS for o in options)


def order_members(members):
    """(members sorted by time, the tag that ordered them): the first of ORDER_TAGS that every member has and that
    tells them all apart; None when none does (the group is not assembled)."""
    for key, tag in ORDER_TAGS:
        values = [m.start.get(key) for m in members]
        if None not in values and len(set(values)) == len(values):
            return sorted(members, key=lambda m: m.start[key]), tag
    return None, None


def dynamic_id(members):
    """A stable id for the dynamic: 'dynamic:' + a hash of its member series uids in time order."""
    return "dynamic:" + hashlib.sha1("\\".join(m.series_uid for m in members).encode()).hexdigest()[:16]


def merge(members, ordered_by):
    """One Series holding the members' frames, member after member, time index = the member's rank."""
    first = members[0]
    frames, sops, slopes, intercepts, times, layout, entries = [], [], [], [], [], [], []
    for rank, m in enumerate(members):
        entries.append({"series_uid": m.series_uid, "series_number": m.series_number,
                        "series_description": m.series_description, "truth_dir": m.truth_dir,
                        "start": len(frames), "stop": len(frames) + len(m.frames)})
        frames += m.frames
        sops += m.sop_instance_uids
        slopes += m.slopes
        intercepts += m.intercepts
        times += m.times
        layout += [(rank, k) for _, k in m.layout]
    uid = dynamic_id(members)
    truth_dir = first.truth_dir if all(m.truth_dir for m in members) else None
    return replace(
        first, series_uid=uid, series_description=" ".join(filter(None, (_member_name(first), first.acquisition.get(
            "asl")))) + f" (dynamic of {len(members)} series)",
        frames=frames, sop_instance_uids=sops, slopes=slopes, intercepts=intercepts, times=times,
        temporal_index=[t for t, _ in layout], layout=layout, n_files=sum(m.n_files for m in members),
        padded=any(m.padded for m in members), truth_dir=truth_dir,
        notes=sorted({n for m in members for n in m.notes} | {f"dynamic assembled from {len(members)} series"}),
        dynamic={"id": uid, "ordered_by": ordered_by, "time_points": len(members), "members": entries})


def assemble_dynamics(series_list, mode="auto"):
    """The series list with each dynamic's members replaced by one assembled Series, at the first member's place
    (described by describe_dynamic); a series that would be a time point of one but lacks some of its slice
    positions stays apart with LEFT_OUT_NOTE."""
    if check_mode(mode) == "off":
        return list(series_list)
    groups = {}
    for s in series_list:
        key = acquisition_key(s)
        if key is not None:
            groups.setdefault(key, []).append(s)  # in series_list's order: members[0] comes first
    replaced, assembled = {}, {}
    for key, members in groups.items():
        ordered, tag = order_members(members) if len(members) > 1 else (None, None)
        if ordered is not None:
            replaced.update({m.series_uid: None for m in members})
            replaced[members[0].series_uid] = merge(ordered, tag)
            assembled.setdefault(_without_positions(key), []).append(set(key[4]))
    out = []
    for s in series_list:
        if s.series_uid in replaced:
            if replaced[s.series_uid] is not None:
                out.append(replaced[s.series_uid])
            continue
        key = acquisition_key(s)
        if key is not None and any(set(key[4]) < whole for whole in assembled.get(_without_positions(key), [])):
            s = replace(s, notes=sorted(set(s.notes) | {LEFT_OUT_NOTE}))
        out.append(s)
    return out


# A time point some of whose images are missing (unreadable, truncated, not exported) has fewer slice positions than
# the others, so it is not a member of their dynamic: it is enhanced and trained on alone, without its time context.
# It is not assembled with its missing positions (every method reads each position at every time point); it is
# named instead, in preprocessing's series_notes and enhance.py's record of the series.
LEFT_OUT_NOTE = "time point with missing images, left out of its dynamic"


def _without_positions(key):
    return key[:4] + key[5:]


def describe_dynamic(series):
    """summary.json's record of an assembled dynamic: id, patient, ordering tag, time points, member series."""
    d = series.dynamic
    return {"id": d["id"], "patient_id": series.patient_id, "ordered_by": d["ordered_by"],
            "time_points": d["time_points"], "series_uids": [m["series_uid"] for m in d["members"]],
            "series_numbers": [m["series_number"] for m in d["members"]],
            "series_descriptions": [m["series_description"] for m in d["members"]]}


def source_series_uids(series):
    """The SeriesInstanceUID each frame of a series was read from: its members' for an assembled dynamic."""
    if not series.dynamic:
        return [series.series_uid] * len(series.frames)
    out = []
    for m in series.dynamic["members"]:
        out += [m["series_uid"]] * (m["stop"] - m["start"])
    return out


PER_FRAME = ("frames", "sop_instance_uids", "slopes", "intercepts", "temporal_index", "layout", "times")


def select_frames(series, indices):
    """The Series of only the frames `indices` (in that order): every per-frame list picked alike (a list that is
    not per frame, e.g. empty, is kept), n_files recounted; nothing is read."""
    indices = list(indices)
    picked = {name: [getattr(series, name)[i] for i in indices] for name in PER_FRAME
              if len(getattr(series, name)) == len(series.frames)}
    return replace(series, n_files=len({path for path, _ in picked["frames"]}), **picked)


def member_series(series, member):
    """The source series `member` (an entry of series.dynamic["members"]) of an assembled dynamic, as the Series
    it was indexed as: its frames, its uid, number and description, one time point."""
    part = select_frames(series, range(member["start"], member["stop"]))
    return replace(part, series_uid=member["series_uid"], series_number=member["series_number"],
                   series_description=member["series_description"], temporal_index=[0] * len(part.frames),
                   layout=[(0, k) for _, k in part.layout], truth_dir=member["truth_dir"], dynamic=None)
