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
