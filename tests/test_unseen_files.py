"""Real exports' quirks that an audit on files the project had not seen found: each is a small tree written here, run
through the index, preprocessing or enhance.py as a user's files would be."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import image_dataset, uid, write_mr_series
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


def test_a_backslash_in_a_description_is_read_as_written(tmp_path):
    """A backslash splits a text value into several (PS3.5 6.2): "T1\\fs dyn" reads back as written, not as the
    text of a Python list, in the index (which the series filter searches) and in enhance.py's description."""
    write_mr_series(tmp_path / "s", "P1", n_slices=2, rows=8, cols=8, description="T1\\fs dyn")
    (series,), _, _ = index(tmp_path)
    assert series.series_description == "T1\\fs dyn"
