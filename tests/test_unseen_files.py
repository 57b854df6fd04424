"""Real exports' quirks that an audit on files the project had not seen found: each is a small tree written here, run
through the index, preprocessing or enhance.py as a user's files would be."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import enhanced_mr_dataset, write_mr_series
from pydicom.dataset import FileMetaDataset

from breastmri.config import load_config
from breastmri.data import preprocess
from breastmri.dicom import writer
from breastmri.dicom.index import index
from breastmri.dicom.pixels import read_series
from breastmri.enhance import pipeline
from breastmri.enhance.enhancer import load_enhancer


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
