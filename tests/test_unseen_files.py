"""Real exports' quirks that an audit on files the project had not seen found: each is a small tree written here, run
through the index, preprocessing or enhance.py as a user's files would be."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import enhanced_mr_dataset, image_dataset, uid, write_mr_series
from pydicom.dataset import FileMetaDataset

from breastmri.config import load_config
from breastmri.data import preprocess
from breastmri.dicom import writer
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


def test_files_without_file_meta_are_read(tmp_path):
    """No preamble and no group 0002 (old exports), or file meta without a TransferSyntaxUID: the encoding
    pydicom found becomes the transfer syntax, and the pixels decode as the original's."""
    _, stack = write_mr_series(tmp_path / "a", "P1", n_slices=3, rows=12, cols=10)
    for n, path in enumerate(sorted((tmp_path / "a").glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        if n % 2:  # meta without its transfer syntax
            del ds.file_meta.TransferSyntaxUID
        else:  # no meta, no preamble
            ds.file_meta, ds.preamble = FileMetaDataset(), None
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert not (tmp_path / "a" / "IM0001.dcm").read_bytes()[128:132] == b"DICM"
    (series,), skips, _ = index(tmp_path / "a")
    np.testing.assert_array_equal(read_series(series), stack)


def test_a_series_the_simulation_cannot_take_is_skipped_alone(tmp_path, monkeypatch):
    """Preprocessing counts a failure of the simulation as that series' skip reason and goes on; images of one row
    (a dynamic of 1 x 24 px) are simulated, not a crash."""
    write_mr_series(tmp_path / "tree" / "thin", "P1", n_slices=2, rows=1, cols=24, time_points=3)
    write_mr_series(tmp_path / "tree" / "good", "P2", n_slices=2, rows=16, cols=16, time_points=3)
    cfg = load_config()
    summary = preprocess.run(tmp_path / "tree", tmp_path / "out", cfg, progress=False)
    assert summary["series_processed"] == 2, summary["series_skipped"]

    def failing(clean, *args, **kwargs):
        if clean.shape[1] == 1:
            raise FloatingPointError("a case the simulation never met")
        return degrade(clean, *args, **kwargs)

    degrade = preprocess.degrade
    monkeypatch.setattr(preprocess, "degrade", failing)
    summary = preprocess.run(tmp_path / "tree", tmp_path / "out2", cfg, progress=False)
    assert summary["series_processed"] == 1 and summary["series_skipped"] == {"simulation failed": 1}


def test_enhanced_headers_fit_their_vrs_whatever_the_source_wrote(identity_run, tmp_path):
    """A UTF-8 description of 20 CJK characters (60 bytes), a SeriesNumber near the top of IS and a PixelSpacing
    written with decimal commas: the output's description fits LO's 64 bytes, its number IS, its spacing reads."""
    write_mr_series(tmp_path / "in", "P1", n_slices=2, rows=16, cols=16)
    for path in (tmp_path / "in").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SeriesDescription = "乳房造影" * 5
        ds.SeriesNumber = 2147483027
        ds.PixelSpacing = [1.625, 1.625]
        ds.save_as(path, enforce_file_format=True)
        path.write_bytes(path.read_bytes().replace(b"1.625\\1.625", b"1,625\\1,625"))
    summary = pipeline.run(load_enhancer(identity_run), tmp_path / "in", tmp_path / "out", progress=False)
    assert summary["series_done"] == 1, summary["series"]
    for path in Path(tmp_path / "out").rglob("*.dcm"):
        out = pydicom.dcmread(path)
        assert len(out.SeriesDescription.encode("utf-8")) <= 64
        assert out.SeriesDescription.endswith(writer.DESCRIPTION_SUFFIX)
        assert 0 < int(out.SeriesNumber) <= writer.IS_MAX
        assert [float(v) for v in out.PixelSpacing] == [1.625, 1.625]


def test_float_pixel_data_is_skipped_with_its_reason(tmp_path):
    """An MR image in Float Pixel Data (a derived object; enhance.py could not write it back in stored integers)
    is a counted skip, not an output that no reader opens."""
    write_mr_series(tmp_path / "ok", "P1", n_slices=2, rows=8, cols=8)
    write_mr_series(tmp_path / "float", "P2", n_slices=2, rows=8, cols=8)
    for path in (tmp_path / "float").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        values = ds.pixel_array.astype("<f4") / 1000
        del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
        ds.BitsAllocated = 32
        ds.FloatPixelData = values.tobytes()
        ds.save_as(path, enforce_file_format=True)
    series, skips, _ = index(tmp_path)
    assert [s.patient_id for s in series] == ["P1"]
    assert skips.files == {"float pixel data": 2}


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


def _philips_dynamic(root):
    """A Philips-style dynamic of 3 time points x 2 positions whose images are each scaled to fill 12 bits and
    say by how much in the private Scale Slope (2005,xx0E), RescaleSlope 1: the stored values' scale changes
    from time point to time point, the signal's (the original stack) does not beyond 20% per time point."""
    _, stack = write_mr_series(root, "PP", n_slices=2, rows=16, cols=16, time_points=3)
    signal = {}
    for path in sorted(root.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.Manufacturer = "Philips Medical Systems"
        original = ds.pixel_array.astype(np.float64)
        scale = 4095.0 / original.max()
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = np.rint(original * scale).astype("<u2").tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x0E, "FL", scale)
        ds.save_as(path, enforce_file_format=True)
        signal[ds.SOPInstanceUID] = original
    return signal


def test_philips_private_scale_slope_gives_the_measured_signal(identity_run, tmp_path):
    """Read as display values, the tissue of the Philips dynamic is alike at every time point (each image fills
    12 bits); read as the measured signal (dcm2niix's precise values) it keeps the original's time course. The
    enhanced series goes back to the source's stored values (its own rescale, the identity model)."""
    signal = _philips_dynamic(tmp_path / "in")
    (series,), _, _ = index(tmp_path / "in")
    values = read_series(series)
    expected = np.stack([signal[u] for u in series.sop_instance_uids])
    assert np.allclose(values, expected, rtol=2e-3, atol=1.0)
    summary = pipeline.run(load_enhancer(identity_run), tmp_path / "in", tmp_path / "out", progress=False)
    assert summary["series_done"] == 1, summary["series"]
    sources = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p).pixel_array for p in (tmp_path / "in").glob("*")}
    for path in (tmp_path / "out").rglob("*.dcm"):
        out = pydicom.dcmread(path)
        source = sources[out.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert np.abs(out.pixel_array.astype(int) - source.astype(int)).max() <= 8


@pytest.mark.parametrize("place", ["own frame", "shared", "top level"])
def test_an_enhanced_philips_object_reads_its_scale_slope_wherever_it_is_kept(tmp_path, place):
    """Philips' enhanced objects keep the Scale Slope in the private sequence (2005,xx0F) of each frame's group, of
    the group shared by all frames, or at the top level of the file: read at each place, the frames' values are the
    measured signal (500, 600, 700), not the stored values scaled to fill 12 bits."""
    signal = np.array([500.0, 600.0, 700.0])
    scales = 4095.0 / signal if place == "own frame" else np.full(3, 4095.0 / signal.max())
    frames = np.rint(signal[:, None, None] * scales[:, None, None] * np.ones((3, 8, 8)))
    ds = enhanced_mr_dataset(frames, [0.0, 0.0, 0.0], [1, 2, 3], [1.0] * 3, [0.0] * 3)
    ds.Manufacturer = "Philips Medical Systems"
    ds.BitsStored, ds.HighBit = 12, 11

    def private_scale(group, scale):
        item = pydicom.Dataset()
        item.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x0E, "FL", float(scale))
        group.private_block(0x2005, "Philips MR Imaging DD 005", create=True).add_new(0x0F, "SQ",
                                                                                   pydicom.Sequence([item]))

    if place == "own frame":
        for group, scale in zip(ds.PerFrameFunctionalGroupsSequence, scales):
            private_scale(group, scale)
    elif place == "shared":
        private_scale(ds.SharedFunctionalGroupsSequence[0], scales[0])
    else:
        ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x0E, "FL", float(scales[0]))
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "enhanced.dcm", enforce_file_format=True)
    (series,), _, _ = index(tmp_path / "in")
    values = read_series(series)
    assert np.allclose(values.mean(axis=(1, 2)), signal, rtol=2e-3)


def _misstated(ds, case):
    """Edit one image of a 16-bit series so that its header misstates its pixel data (`case`)."""
    pixels = ds.pixel_array.astype(np.uint16)
    if case == "values in the top 12 bits":
        ds.BitsStored, ds.HighBit = 12, 15
        ds.PixelData = ((pixels >> 4) << 4).astype("<u2").tobytes()
    elif case == "values above 12 bits":
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = (pixels | 0x1000).astype("<u2").tobytes()  # every value reaches bit 12
    elif case == "16-bit data labelled 8-bit":
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    elif case == "rescale slope 0":
        ds.RescaleSlope, ds.RescaleIntercept = 0, 0
    return ds


MISSTATED = {"values in the top 12 bits": "HighBit is not BitsStored - 1",
             "values above 12 bits": "stored values above BitsStored",
             "16-bit data labelled 8-bit": "pixel data longer than the header describes",
             "rescale slope 0": "invalid rescale"}


@pytest.mark.parametrize("case", list(MISSTATED))
def test_pixel_data_its_header_misstates_is_skipped_before_anything_is_made_of_it(identity_run, tmp_path, case):
    """Decoders mask bits above BitsStored, ignore HighBit and read as many bytes as the header says: each case
    read an image that is not the stored one (or, with slope 0, a blank one) and trained on it or enhanced it
    without a word. Preprocessing and enhance.py skip the series with the same counted reason, the other series
    of the tree go on."""
    write_mr_series(tmp_path / "tree" / "ok", "P1", n_slices=2, rows=16, cols=16)
    write_mr_series(tmp_path / "tree" / "bad", "P2", n_slices=2, rows=16, cols=16)
    for path in (tmp_path / "tree" / "bad").glob("*.dcm"):
        _misstated(pydicom.dcmread(path), case).save_as(path, enforce_file_format=True)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
    summary = preprocess.run(tmp_path / "tree", tmp_path / "pairs", cfg, progress=False)
    assert summary["series_processed"] == 1
    reasons = {**summary["series_skipped"], **summary.get("files_skipped", {})}
    assert MISSTATED[case] in reasons, summary
    out = pipeline.run(load_enhancer(identity_run), tmp_path / "tree", tmp_path / "out", progress=False)
    assert out["series_done"] == 1, [s for s in out["series"]]
    assert MISSTATED[case] in str(out), out


@pytest.mark.parametrize("kind", ["reversible wavelet", "irreversible wavelet", "marked lossy, uncompressed"])
def test_a_lossy_source_is_named_so_in_the_summary_and_the_output(identity_run, tmp_path, kind):
    """JPEG 2000 (1.2.840.10008.1.2.4.91) may be lossless or lossy; only its codestream says which. A source
    encoded with the irreversible wavelet was written back uncompressed without LossyImageCompression, and
    preprocessing used it as a clean target without a word: its outputs now keep the mark (PS3.3 C.7.6.1.1.5) and
    its series carries a counted note, as does an uncompressed source that says it was lossy compressed before. The
    reversible wavelet gets neither."""
    from pydicom.uid import JPEG2000, JPEG2000Lossless

    write_mr_series(tmp_path / "in", "P1", n_slices=2, rows=32, cols=32)
    for path in (tmp_path / "in").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = np.minimum(ds.pixel_array, 4095).astype("<u2").tobytes()
        if kind == "irreversible wavelet":
            ds.compress(JPEG2000, j2k_cr=[20])
        elif kind == "reversible wavelet":  # the reversible codestream under the syntax that allows either
            ds.compress(JPEG2000Lossless)
            ds.file_meta.TransferSyntaxUID = JPEG2000
        else:
            ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_15444_1"
        ds.save_as(path, enforce_file_format=True)
    lossy = kind != "reversible wavelet"
    note = "lossy compressed source (ISO_15444_1)"
    (series,), _, _ = index(tmp_path / "in")
    assert (note in series.notes) == lossy
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
    summary = preprocess.run(tmp_path / "in", tmp_path / "pairs", cfg, progress=False)
    assert summary["series_notes"].get(note, 0) == lossy
    out = pipeline.run(load_enhancer(identity_run), tmp_path / "in", tmp_path / "out", progress=False)
    assert out["series_done"] == 1, [s for s in out["series"]]
    for path in (tmp_path / "out").rglob("*.dcm"):
        written = pydicom.dcmread(path)
        assert (written.get("LossyImageCompression") == "01") == lossy
        assert (written.get("LossyImageCompressionMethod") == "ISO_15444_1") == lossy


def test_a_series_whose_noise_is_read_from_texture_is_named_in_a_warning(tmp_path, caplog):
    """A single series with its background masked to 0 has neither air nor repeated frames: its noise comes from
    the wavelet estimate, several times off on real anatomy. Preprocessing says so (the summary counted it only)."""
    write_mr_series(tmp_path / "tree", "P1", n_slices=3, rows=32, cols=32)
    for path in (tmp_path / "tree").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        ds.PixelData = np.where(pixels < 300, 0, pixels).astype("<u2").tobytes()
        ds.save_as(path, enforce_file_format=True)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
    with caplog.at_level("WARNING"):
        summary = preprocess.run(tmp_path / "tree", tmp_path / "pairs", cfg, progress=False)
    assert summary["sigma_methods"] == {"wavelet": 1}
    assert any("sigma_method wavelet" in r.getMessage() for r in caplog.records)


def test_an_out_folder_that_cannot_be_written_ends_preprocessing_in_one_line(tmp_path):
    """--out on a file (or a read-only place) ended in an OSError traceback, after the whole tree was indexed."""
    write_mr_series(tmp_path / "tree", "P1", n_slices=2, rows=8, cols=8)
    (tmp_path / "taken").write_text("a file")
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
    with pytest.raises(preprocess.PreprocessError, match="--out"):
        preprocess.run(tmp_path / "tree", tmp_path / "taken" / "pairs", cfg, progress=False)


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


def test_a_compressed_file_cut_short_is_skipped_as_truncated(tmp_path):
    """A download cut short in a compressed (encapsulated) file passed the index, which only asked for 16 bytes of
    pixel data, and failed the pixel read: the whole series was skipped as "pixel read failed". The index now
    walks the fragments' item headers: the file is skipped as "truncated", the rest of its series goes on, as for
    an uncompressed file."""
    from pydicom.uid import RLELossless

    write_mr_series(tmp_path / "in", "P1", n_slices=3, rows=32, cols=32)
    paths = sorted((tmp_path / "in").glob("*.dcm"))
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) - 600])  # the last fragment's end is missing
    (series,), skips, _ = index(tmp_path / "in")
    assert skips.files == {"truncated": 1} and len(series.frames) == 2
    assert read_series(series).shape == (2, 32, 32)


def test_values_past_the_stored_range_are_counted_and_named(identity_run, tmp_path, monkeypatch):
    """A network that brightens tissue past what the source's 12 bits hold is clipped there (the output keeps the
    source's pixel format); the count and a series note say so instead of hiding it. Values below 0 of the unsigned
    source (the noise floor's) are clipped without a count. The identity model clips nothing."""
    _, stack = write_mr_series(tmp_path / "in", "P1", n_slices=2, rows=16, cols=16)
    assert 512 < stack.max() < 4096
    for path in (tmp_path / "in").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit = 12, 11
        ds.save_as(path, enforce_file_format=True)
    enhancer = load_enhancer(identity_run)
    plain = pipeline.run(enhancer, tmp_path / "in", tmp_path / "plain", progress=False)["series"][0]
    assert plain["clipped_pixels"] == 0 and pipeline.CLIPPED_NOTE not in plain["notes"]

    predict = pipeline.predict_stack
    for name, change in (("bright", lambda pred: pred * 8.0), ("dark", lambda pred: pred - 0.5)):
        monkeypatch.setattr(pipeline, "predict_stack", lambda *args, change=change, **kwargs: (
            lambda pred, info: (change(pred), info))(*predict(*args, **kwargs)))
        result = pipeline.run(enhancer, tmp_path / "in", tmp_path / name, progress=False)["series"][0]
        values = [pydicom.dcmread(p).pixel_array for p in (tmp_path / name).rglob("*.dcm")]
        if name == "bright":  # clipped at 4095, counted and named
            assert result["clipped_pixels"] > 0 and pipeline.CLIPPED_NOTE in result["notes"]
            assert max(int(v.max()) for v in values) == 4095
        else:  # below 0, where a denoiser's noise floor goes: clipped, not counted
            assert min(int(v.min()) for v in values) == 0
            assert result["clipped_pixels"] == 0 and pipeline.CLIPPED_NOTE not in result["notes"]


def test_a_masked_background_stays_0_in_the_enhanced_series(identity_run, tmp_path, monkeypatch):
    """Air the scanner set to 0 (here 60% of the image) was written back as whatever the network made of it (5-17
    on a 16-channel breast series): it stays 0, as padding stays padding; the tissue is the network's, and so are
    scattered zeros (noise rounded to 0, as in ProstateX's VIBE series), which are no mask."""
    _, stack = write_mr_series(tmp_path / "in", "P1", n_slices=2, rows=16, cols=16)
    for path in (tmp_path / "in").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.copy()
        pixels[:, :10] = 0
        pixels[5, 12] = pixels[9, 14] = 0  # scattered zeros (noise rounded to 0) are no mask
        ds.PixelData = pixels.astype("<u2").tobytes()
        ds.save_as(path, enforce_file_format=True)
    predict = pipeline.predict_stack
    monkeypatch.setattr(pipeline, "predict_stack",
                        lambda *args, **kwargs: (lambda pred, info: (pred + 0.05, info))(*predict(*args, **kwargs)))
    summary = pipeline.run(load_enhancer(identity_run), tmp_path / "in", tmp_path / "out", progress=False)
    assert summary["series_done"] == 1
    for path in (tmp_path / "out").rglob("*.dcm"):
        out = pydicom.dcmread(path).pixel_array
        assert (out[:, :10] == 0).all() and (out[:, 10:] > 0).all()


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


def test_enhance_accounts_for_every_file_it_saw(identity_run, tmp_path):
    """The files of a series skipped after indexing (here a constant image, and on a second run every series
    whose output exists) were in no count of enhance_summary.json: files_seen now equals the files written plus
    those skipped, on the first run and on the second."""
    write_mr_series(tmp_path / "in" / "ok", "P1", n_slices=3, rows=16, cols=16)
    _, stack = write_mr_series(tmp_path / "in" / "flat", "P2", n_slices=2, rows=16, cols=16)
    for path in (tmp_path / "in" / "flat").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.PixelData = np.full((16, 16), 700, "<u2").tobytes()
        ds.save_as(path, enforce_file_format=True)
    enhancer = load_enhancer(identity_run)
    for run in range(2):
        summary = pipeline.run(enhancer, tmp_path / "in", tmp_path / "out", progress=False)
        written = sum(r["files"] for r in summary["series"] if r["status"] == "done")
        assert summary["files_seen"] == 5 == written + sum(summary["files_skipped"].values()), summary
    assert summary["files_skipped"]["exists"] == 3


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


def test_a_mask_is_skipped_whatever_its_header_says(identity_run, tmp_path):
    """A workstation's mask written as an MR image (0 and 1000) was degraded with no noise to read, trained on as
    its own target and "enhanced" into values that are no mask; preprocessing and enhance.py skip it with one
    counted reason, the other series go on."""
    from breastmri.data.preprocess import LABEL_MAP_REASON

    write_mr_series(tmp_path / "in" / "dce", "P1", n_slices=2, rows=16, cols=16)
    _, stack = write_mr_series(tmp_path / "in" / "mask", "P2", n_slices=2, rows=16, cols=16, description="A")
    for path in (tmp_path / "in" / "mask").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.PixelData = np.where(ds.pixel_array > 300, 1000, 0).astype("<u2").tobytes()
        ds.save_as(path, enforce_file_format=True)
    summary = pipeline.run(load_enhancer(identity_run), tmp_path / "in", tmp_path / "out", progress=False)
    assert summary["series_done"] == 1 and summary["series_skipped"] == {LABEL_MAP_REASON: 1}
    pre = preprocess.run(tmp_path / "in", tmp_path / "pairs", load_config(None), progress=False)
    assert pre["series_skipped"].get(LABEL_MAP_REASON) == 1


@pytest.mark.parametrize("stated", [1.5, 15000], ids=["tesla", "gauss"])
def test_a_series_acquired_at_another_field_is_left_out_of_the_pairs(tmp_path, stated):
    """A 1.5T series in a 3T tree was degraded as if it were 3T (to about 0.75 T) and then served as a 3T target,
    with one line of warning. Preprocessing leaves it out with a counted reason (older exports state the field in
    gauss: 15000 is 1.5 T); enhance.py, made for such scans, takes it."""
    from breastmri.data.preprocess import OTHER_FIELD_REASON

    write_mr_series(tmp_path / "tree" / "3t", "P1", n_slices=2, rows=16, cols=16)
    write_mr_series(tmp_path / "tree" / "15t", "P2", n_slices=2, rows=16, cols=16, seed=1)
    for path in (tmp_path / "tree" / "15t").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.MagneticFieldStrength = stated
        ds.save_as(path, enforce_file_format=True)
    summary = preprocess.run(tmp_path / "tree", tmp_path / "pairs", load_config(None), progress=False)
    assert summary["series_processed"] == 1 and summary["series_skipped"] == {OTHER_FIELD_REASON: 1}
    (series_15t,) = [s for s in index(tmp_path / "tree")[0] if s.patient_id == "P2"]
    assert series_15t.field_strength_t == 1.5
