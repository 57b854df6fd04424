"""How a real export's tree is read into series: time order, dynamics assembled or kept apart, files and folders
counted. Each quirk is one an audit on files the project had not seen found, written here as a small tree."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import enhanced_mr_dataset, image_dataset, uid, write_mr_series

from breastmri.config import load_config
from breastmri.data import preprocess
from breastmri.dicom.dynamics import assemble_dynamics
from breastmri.dicom.index import index
from breastmri.dicom.pixels import read_series
from breastmri.enhance import pipeline
from breastmri.enhance.enhancer import load_enhancer

# four frames of a dynamic acquired across midnight: (AcquisitionDate, AcquisitionTime)
MIDNIGHT = [("20240105", "235950"), ("20240105", "235958"), ("20240106", "000006"), ("20240106", "000014")]


def _midnight_tree(root, split):
    """Two slice positions x MIDNIGHT, frame t at 1000 + 100 t; one series, or one series per time point (no
    TemporalPositionIdentifier, as Siemens TWIST writes them). Files are named against the time order."""
    rng = np.random.default_rng(0)
    for t, (date, time) in enumerate(MIDNIGHT):
        series_uid = uid("midnight", split, t if split else 0)
        for z in range(2):
            pixels = np.round(1000 + 100 * t + 5 * rng.standard_normal((16, 16))).astype(np.uint16)
            ds = image_dataset(pixels, patient_id="PM", series_uid=series_uid, instance=t * 2 + z + 1,
                               position=3.0 * z, description="dyn", acquisition_time=time)
            ds.AcquisitionDate = ds.ContentDate = ds.SeriesDate = date
            ds.SeriesNumber = 10 + t if split else 10
            ds.AcquisitionNumber = 1 if split else t + 1  # TWIST numbers restart; only the time orders them
            (root / f"s{t if split else 0}").mkdir(parents=True, exist_ok=True)
            ds.save_as(root / f"s{t if split else 0}" / f"IM{9 - 2 * t - z}.dcm", enforce_file_format=True)


@pytest.mark.parametrize("split", [False, True], ids=["one series", "one series per time point"])
def test_a_dynamic_acquired_across_midnight_keeps_its_time_order(tmp_path, split):
    _midnight_tree(tmp_path, split)
    series, skips, _ = index(tmp_path)
    (dynamic,) = assemble_dynamics(series) if split else series
    assert sorted({t for t, _ in dynamic.layout}) == [0, 1, 2, 3]
    frames = read_series(dynamic)
    means = [frames[[i for i, (t, _) in enumerate(dynamic.layout) if t == time]].mean() for time in range(4)]
    assert np.allclose(means, [1000, 1100, 1200, 1300], atol=5), means


def test_linked_folders_are_read_once(tmp_path):
    """Patient folders that are links (an archive of links) are followed; a link back up the tree and a second
    link to one folder add nothing."""
    write_mr_series(tmp_path / "store" / "a", "P1", n_slices=2, rows=8, cols=8)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "P1").symlink_to(tmp_path / "store")
    (tree / "P1 again").symlink_to(tmp_path / "store")
    (tmp_path / "store" / "loop").symlink_to(tree)
    series, skips, seen = index(tree)
    assert [(s.patient_id, len(s.frames)) for s in series] == [("P1", 2)] and not skips.files


def test_a_trigger_time_of_0_on_every_image_orders_nothing(tmp_path):
    """Ungated series often write TriggerTime 0 on every image: with no acquisition time it tells nothing apart,
    and the frames are ordered as without it (by InstanceNumber), not skipped as repeated positions."""
    series_uid = uid("trigger0")
    for t in range(3):
        for z in range(2):
            ds = image_dataset(np.full((8, 8), 1000 + 100 * t, np.uint16), patient_id="P0", series_uid=series_uid,
                               instance=1 + 2 * t + z, position=3.0 * z)
            ds.TriggerTime = 0
            ds.save_as(tmp_path / f"IM{9 - 2 * t - z}.dcm", enforce_file_format=True)
    (series,), skips, _ = index(tmp_path)
    frames = read_series(series)
    means = [frames[[i for i, (t, _) in enumerate(series.layout) if t == time]].mean() for time in range(3)]
    assert np.allclose(means, [1000, 1100, 1200]), means


def test_a_trigger_time_per_slice_orders_nothing(tmp_path):
    """A TriggerTime that differs from slice to slice but not between the repeats of a slice (a delay per slice)
    tells no time point apart: the frames are ordered by InstanceNumber, not skipped as repeated positions."""
    series_uid = uid("trigger per slice")
    for t in range(3):
        for z in range(2):
            ds = image_dataset(np.full((8, 8), 1000 + 100 * t, np.uint16), patient_id="P0", series_uid=series_uid,
                               instance=1 + 2 * t + z, position=3.0 * z)
            ds.TriggerTime = 40 * z
            ds.save_as(tmp_path / f"IM{9 - 2 * t - z}.dcm", enforce_file_format=True)
    (series,), skips, _ = index(tmp_path)
    frames = read_series(series)
    means = [frames[[i for i, (t, _) in enumerate(series.layout) if t == time]].mean() for time in range(3)]
    assert np.allclose(means, [1000, 1100, 1200]), means


def _trigger_dce(folder, acquisition_time):
    """A GE-style DCE in one series: 3 phases x 2 slices, no TemporalPositionIdentifier, the phase's delay in
    TriggerTime, one AcquisitionTime for all (or none), no InstanceNumber, files named against the time order.
    Returns the phases' means, in time order."""
    folder.mkdir(parents=True)
    series_uid = uid("trigger", acquisition_time)
    for t in range(3):
        for z in range(2):
            pixels = np.full((8, 8), 1000 + 100 * t + z, np.uint16)
            ds = image_dataset(pixels, patient_id="PT", series_uid=series_uid, sop_uid=uid(series_uid, t, z),
                               position=3.0 * z, acquisition_time=acquisition_time)
            del ds.InstanceNumber
            ds.TriggerTime = 30000 * t
            ds.save_as(folder / f"IM{9 - 2 * t - z}.dcm", enforce_file_format=True)
    return [1000.5, 1100.5, 1200.5]


@pytest.mark.parametrize("acquisition_time", ["101500", None], ids=["one acquisition time", "none"])
def test_phases_told_apart_by_trigger_time_are_time_points_in_order(tmp_path, acquisition_time):
    expected = _trigger_dce(tmp_path / "s", acquisition_time)
    (series,), skips, _ = index(tmp_path)
    frames = read_series(series)
    means = [frames[[i for i, (t, _) in enumerate(series.layout) if t == time]].mean() for time in range(3)]
    assert np.allclose(means, expected), means


def test_a_missing_image_keeps_the_later_phases_of_its_position_in_place(tmp_path):
    """The same GE-style DCE without phase 1 of slice 1 (not exported): ranked at each position, that slice's phase
    2 became its time point 1, beside slice 0's phase 1, and the context paired frames 90 s apart without a word.
    Each phase's TriggerTime is shared by every position, so the rank is among the series' phases; the hole is
    named in the series' notes."""
    from breastmri.dicom.index import MISSING_IMAGES_NOTE

    _trigger_dce(tmp_path / "s", "101500")
    missing = next(p for p in (tmp_path / "s").glob("*.dcm") if pydicom.dcmread(p).pixel_array[0, 0] == 1101)
    missing.unlink()
    (series,), _, _ = index(tmp_path)
    frames = read_series(series)
    for (t, k), frame in zip(series.layout, frames):
        assert frame[0, 0] == 1000 + 100 * t + k, (t, k, frame[0, 0])
    assert (1, 1) not in series.layout and MISSING_IMAGES_NOTE in series.notes


def test_a_series_uid_shared_by_two_patients_is_skipped(tmp_path):
    """Two patients whose files carry one SeriesInstanceUID (a broken anonymization) are not one series: merged,
    one patient's images would cross the patient split."""
    shared = uid("shared series")
    write_mr_series(tmp_path / "a", "PA", n_slices=2, rows=8, cols=8, series_uid=shared)
    write_mr_series(tmp_path / "b", "PB", n_slices=2, rows=8, cols=8, series_uid=shared, seed=1)
    write_mr_series(tmp_path / "c", "PC", n_slices=2, rows=8, cols=8)
    series, skips, _ = index(tmp_path)
    assert [s.patient_id for s in series] == ["PC"]
    assert skips.series == {"one series UID for several patients or studies": 1}


def test_an_image_without_a_position_in_a_placed_series_skips_the_series(tmp_path):
    """One file of a DCE lacks ImagePositionPatient: numbered on its own it would land on another slice's place."""
    write_mr_series(tmp_path / "s", "P1", n_slices=3, rows=8, cols=8, time_points=2)
    path = sorted((tmp_path / "s").glob("*.dcm"))[0]
    ds = pydicom.dcmread(path)
    del ds.ImagePositionPatient
    ds.save_as(path, enforce_file_format=True)
    series, skips, _ = index(tmp_path)
    assert not series and skips.series == {"slice position missing on some images": 1}


def test_duke_phases_named_pre_and_nth_pass_are_one_dynamic(tmp_path):
    """Duke-Breast-Cancer-MRI stores a DCE as "ax dyn pre", "ax dyn 1st pass", ... without a protocol name: one
    dynamic, in acquisition order."""
    names = ["ax dyn 2nd pass", "ax dyn pre", "ax dyn 3rd pass", "ax dyn 1st pass"]
    order = [2, 0, 3, 1]
    for name, t in zip(names, order):
        for z in range(2):
            pixels = np.full((8, 8), 1000 + 100 * t, np.uint16)
            ds = image_dataset(pixels, patient_id="PD", series_uid=uid("duke", name), instance=z + 1,
                               position=3.0 * z, description=name, acquisition_time=f"10{t:02d}00")
            (tmp_path / name).mkdir(exist_ok=True)
            ds.save_as(tmp_path / name / f"IM{z}.dcm", enforce_file_format=True)
    series, _, _ = index(tmp_path)
    (dynamic,) = assemble_dynamics(series)
    frames = read_series(dynamic)
    means = [frames[[i for i, (t, _) in enumerate(dynamic.layout) if t == time]].mean() for time in range(4)]
    assert np.allclose(means, [1000, 1100, 1200, 1300]), means


def _single_phase_series(root, name, t, protocol="BREAST BILAT MRI", options="FAST_GEMS\\FS", description=None):
    """One time point of 2 slice positions as its own series (folder `name`), GE-style: ProtocolName names the
    exam."""
    for z in range(2):
        ds = image_dataset(np.full((8, 8), 1000 + 100 * t, np.uint16), patient_id="PG", series_uid=uid("ge", name),
                           instance=z + 1, position=3.0 * z, description=description or name,
                           acquisition_time=f"10{t:02d}00")
        ds.ProtocolName, ds.ScanOptions = protocol, options
        (root / name).mkdir(parents=True, exist_ok=True)
        ds.save_as(root / name / f"IM{z}.dcm", enforce_file_format=True)


# (names, ScanOptions of each, one dynamic?)
EXAM_SERIES = {
    "fat-sat and not, by name": (["Ax VIBRANT pre nonFS", "Ax VIBRANT pre"], ["FAST_GEMS", "FAST_GEMS\\FS"], False),
    "fat-sat and not, by ScanOptions": (["Ax VIBRANT pre"] * 2, ["FAST_GEMS", "FAST_GEMS\\FS"], False),
    "Dixon images": ([f"Ax VIBRANT-Flex {n}" for n in ("WATER", "FAT", "IN PHASE", "OUT PHASE")], None, False),
    "pre and post n": (["Ax VIBRANT pre", "Ax VIBRANT post 1", "Ax VIBRANT post_2"], None, True),
    "numbered phases": (["Ax_DISCO_Ph1", "Ax_DISCO_Ph2", "Ax_DISCO_Ph3"], None, True),
    "minutes": (["Ax VIBRANT 1 min", "Ax VIBRANT 2 min", "Ax VIBRANT 3 min"], None, True),
    "a multiphase option on the later phases": (["ax dyn pre", "ax dyn 1st pass"],
                                                ["FAST_GEMS\\FS", "FAST_GEMS\\MP_GEMS\\FS"], True),
    "a direction option, not fat saturation": (["Ax VIBRANT pre"] * 2, ["FAST_GEMS\\FSA_GEMS", "FAST_GEMS\\FS"], False),
}


@pytest.mark.parametrize("case", list(EXAM_SERIES))
def test_series_of_one_exam_are_one_dynamic_only_when_acquired_alike(tmp_path, case):
    """GE's ProtocolName names the whole exam, so it told nothing apart: a fat-suppressed pre-contrast series and
    one without (the description, or ScanOptions' FS), or the water, fat, in- and opposed-phase series of one Dixon
    acquisition, were assembled into a "dynamic" and each enhanced in the other's time context. Phases named pre,
    post 1, post_2, Ph1, 1 min are one dynamic, and so are phases whose other options differ."""
    names, options, one = EXAM_SERIES[case]
    for t, name in enumerate(names):
        _single_phase_series(tmp_path, f"{t}", t, description=name,
                             **({"options": options[t]} if options else {}))
    series, _, _ = index(tmp_path)
    assembled = assemble_dynamics(series)
    if one:
        assert [s.dynamic["time_points"] for s in assembled] == [len(names)]
    else:
        assert all(s.dynamic is None for s in assembled) and len(assembled) == len(names)


def test_enhanced_objects_of_two_echo_times_are_not_one_dynamic(tmp_path):
    """Enhanced MR keeps TR, TE and the flip angle in its functional groups, where the top-level reading found
    None on both sides: the opposed- and in-phase objects of one Dixon acquisition (same description) were
    assembled as two time points. Read from the groups, they stay apart; with one echo time they assemble."""
    for te_in in (2.46, 1.23):
        root = tmp_path / str(te_in)
        for t, te in enumerate((1.23, te_in)):
            ds = enhanced_mr_dataset(np.full((2, 8, 8), 1000 + 100 * t), [0.0, 3.0], [1, 1], [1.0] * 2, [0.0] * 2,
                                     series_uid=uid("dixon", te_in, t))
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("dixon sop", te_in, t)
            ds.SeriesDescription, ds.AcquisitionTime = "t1_vibe_dixon_tra", f"10{t:02d}00"
            echo = pydicom.Dataset()
            echo.EffectiveEchoTime = te
            ds.SharedFunctionalGroupsSequence[0].MREchoSequence = pydicom.Sequence([echo])
            root.mkdir(exist_ok=True)
            ds.save_as(root / f"e{t}.dcm", enforce_file_format=True)
        series, _, _ = index(root)
        assembled = assemble_dynamics(series)
        assert len(assembled) == (2 if te_in == 2.46 else 1), [s.series_description for s in assembled]


@pytest.mark.parametrize("times", [[150.0], [150.0, 300.0]], ids=["one inversion time", "two"])
def test_an_enhanced_inversion_recovery_object_is_read(tmp_path, times):
    """An enhanced STIR keeps its inversion time in the MR Modifier functional group; one value reads back as a
    plain number, which the acquisition's reading took for a list and the file was skipped as "unreadable"."""
    ds = enhanced_mr_dataset(np.full((2, 8, 8), 900), [0.0, 3.0], [1, 1], [1.0] * 2, [0.0] * 2)
    modifier = pydicom.Dataset()
    modifier.InversionTimes = times
    ds.SharedFunctionalGroupsSequence[0].MRModifierSequence = pydicom.Sequence([modifier])
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "stir.dcm", enforce_file_format=True)
    (series,), skips, _ = index(tmp_path / "in")
    assert series.acquisition["ti_ms"] == 150.0 and not skips.files


def test_a_backslash_in_a_description_is_read_as_written(tmp_path):
    """A backslash splits a text value into several (PS3.5 6.2): "T1\\fs dyn" reads back as written, not as the
    text of a Python list, in the index (which the series filter searches) and in enhance.py's description."""
    write_mr_series(tmp_path / "s", "P1", n_slices=2, rows=8, cols=8, description="T1\\fs dyn")
    (series,), _, _ = index(tmp_path)
    assert series.series_description == "T1\\fs dyn"


def test_hidden_files_and_folders_that_cannot_be_listed_are_counted(tmp_path, monkeypatch):
    """A hidden image (".IM5.dcm"), the files of a hidden folder and a folder that cannot be listed were dropped
    before counting: files_seen did not hold them, and nothing said so. Each is counted under its reason now, so
    files_seen still equals the files used plus those skipped."""
    import os

    from breastmri.dicom.scan import HIDDEN_REASON, UNLISTABLE_REASON

    write_mr_series(tmp_path / "s", "P1", n_slices=3, rows=8, cols=8)
    (tmp_path / ".backup").mkdir()
    for path in sorted((tmp_path / "s").glob("*.dcm"))[:2]:
        (tmp_path / ".backup" / path.name).write_bytes(path.read_bytes())
    (tmp_path / "s" / ".DS_Store").write_bytes(b"\0" * 16)
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "IM1.dcm").write_bytes(b"\0" * 16)
    scandir = os.scandir

    def refuse_locked(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_locked)
    series, skips, files_seen = index(tmp_path)
    assert skips.files == {HIDDEN_REASON: 3, UNLISTABLE_REASON: 1}
    assert files_seen == sum(len(s.frames) for s in series) + sum(skips.files.values()) == 7


@pytest.mark.parametrize("copy", ["identical", "compressed", "other pixels"])
def test_a_second_file_of_one_sop_instance(tmp_path, copy):
    """An identical copy of an image (exported twice, or once compressed) is counted as a duplicate and the series
    is used. A copy with other pixels (sent again after an edit, or damaged) replaced the original when its path
    sorted first, without a word: which one is the image cannot be told, so the series is skipped, every file
    counted."""
    from pydicom.uid import RLELossless

    from breastmri.dicom.index import CONFLICTING_DUPLICATE_REASON

    write_mr_series(tmp_path / "b", "P1", n_slices=3, rows=8, cols=8)
    ds = pydicom.dcmread(sorted((tmp_path / "b").glob("*.dcm"))[0])
    if copy == "other pixels":
        ds.PixelData = (ds.pixel_array + 300).astype("<u2").tobytes()
    elif copy == "compressed":
        ds.compress(RLELossless, generate_instance_uid=False)
    (tmp_path / "a").mkdir()
    ds.save_as(tmp_path / "a" / "IM.dcm", enforce_file_format=True)  # sorts first
    series, skips, files_seen = index(tmp_path)
    assert files_seen == 4
    if copy != "other pixels":
        assert len(series) == 1 and skips.files == {"duplicate SOP instance": 1}
    else:
        assert not series and skips.files == {CONFLICTING_DUPLICATE_REASON: 4}


def test_a_file_cut_short_in_its_header_is_counted_as_truncated(tmp_path):
    """An MR file cut at any point after its preamble: pydicom reads what is there without a word, so a SOPClassUID
    cut mid-value was counted as a made-up SOP class ("SOP class 1.2.840.10"), a header cut before Modality as
    "modality missing". Whatever the cut, the reason is now "truncated" (or, cut between elements just before the
    pixel data, "no pixel data"; cut inside a tag, "unreadable"), never another kind of object."""
    from breastmri.dicom.scan import scan_file

    write_mr_series(tmp_path / "s", "P1", n_slices=1, rows=8, cols=8)
    data = next((tmp_path / "s").glob("*.dcm")).read_bytes()
    reasons = {}
    for cut in range(133, len(data) - 1, 2):
        (tmp_path / "cut.dcm").write_bytes(data[:cut])
        reasons.setdefault(scan_file(str(tmp_path / "cut.dcm")), cut)
    assert set(reasons) <= {"truncated", "no pixel data", "unreadable"}, reasons


def test_a_time_point_with_a_missing_image_is_named_not_silently_left_alone(identity_run, tmp_path):
    """A DCE stored one series per time point, one image of time point 1 truncated: that time point has fewer
    slice positions, is not assembled with the others, and was enhanced alone, without its time context, with
    nothing said. Preprocessing's series_notes and enhance.py's record of the series now name it."""
    from breastmri.dicom.dynamics import LEFT_OUT_NOTE

    _midnight_tree(tmp_path / "in", split=True)
    (tmp_path / "in" / "s1" / "IM6.dcm").write_bytes(b"")  # time point 1, one of its two positions
    series, skips, _ = index(tmp_path / "in")
    assembled = assemble_dynamics(series)
    assert [s.dynamic["time_points"] for s in assembled if s.dynamic] == [3]
    (alone,) = [s for s in assembled if not s.dynamic]
    assert LEFT_OUT_NOTE in alone.notes
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
    summary = preprocess.run(tmp_path / "in", tmp_path / "pairs", cfg, progress=False)
    assert summary["series_notes"].get(LEFT_OUT_NOTE) == 1
    out = pipeline.run(load_enhancer(identity_run), tmp_path / "in", tmp_path / "out", progress=False)
    assert [LEFT_OUT_NOTE in r["notes"] for r in out["series"]].count(True) == 1, out["series"]
