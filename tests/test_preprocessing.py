"""preprocessing.py on tiny DICOM trees written by tests/dicom_fixtures.py and on the MR test files bundled
with pydicom (one per transfer syntax). Images are 24-64 pixels; the whole file runs in seconds."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import (
    BUNDLED_MR,
    bundled,
    enhanced_mr_dataset,
    image_dataset,
    padded_mr_file,
    phantom,
    textured,
    uid,
    write_mixed_tree,
    write_mr_series,
)
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_rescale

from breastmri.config import ConfigError, load_config
from breastmri.data import preprocess
from breastmri.data.grid import pad_to_square, resize_square, unresize_square
from breastmri.data.manifest import MANIFEST_COLUMNS
from breastmri.data.preprocess import run
from breastmri.data.splits import (
    SplitError,
    check_patient_split,
    patient_hash,
    split_patients,
    split_warnings,
)
from breastmri.dicom.index import REPEATED_POSITION_REASON, index_tree
from breastmri.dicom.pixels import read_series

REPO = Path(__file__).resolve().parent.parent


def small_cfg(*overrides, size=32):
    return load_config(overrides=[f"preprocess.image_size={size}", *overrides])


def read_manifest(out):
    with open(out / "manifest.csv", newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def load(out, relative):
    return np.load(out / relative, mmap_mode="r")


def three_patient_tree(root, rows=24, cols=40, n_slices=3):
    for i, patient in enumerate(["A1", "B2", "C3"]):
        write_mr_series(root / patient, patient, n_slices=n_slices, rows=rows, cols=cols, seed=i)
    return root


# --- transfer syntaxes ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundled_tree(tmp_path_factory):
    """The bundled MR_small.dcm in six transfer syntaxes, each as its own patient and series."""
    root = tmp_path_factory.mktemp("bundled")
    for i, (syntax, name) in enumerate(BUNDLED_MR.items()):
        ds = pydicom.dcmread(bundled(name))
        ds.PatientID = f"TS{i}"
        ds.SeriesInstanceUID = uid("bundled", syntax)
        ds.SOPInstanceUID = uid("bundled", syntax, "sop")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        (root / syntax).mkdir()
        ds.save_as(root / syntax / "image.dcm")
    return root


def test_bundled_transfer_syntaxes_decode_to_the_same_pixels(bundled_tree):
    reference_ds = pydicom.dcmread(bundled("MR_small.dcm"))
    reference = apply_rescale(reference_ds.pixel_array, reference_ds).astype(np.float32)
    series, skipped, seen = index_tree(bundled_tree)
    assert seen == len(BUNDLED_MR) and not skipped
    assert len(series) == len(BUNDLED_MR)
    syntaxes = set()
    for s in series:
        path = s.frames[0][0]
        syntaxes.add(str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name))
        stack = read_series(s)
        assert stack.shape == (1, 64, 64) and stack.dtype == np.float32
        np.testing.assert_array_equal(stack[0], reference, err_msg=path)
    assert len(syntaxes) == len(BUNDLED_MR)  # the copies kept their transfer syntax


def test_bundled_transfer_syntaxes_go_through_the_pipeline(bundled_tree, tmp_path):
    out = tmp_path / "out"
    summary = run(bundled_tree, out, small_cfg(size=64), progress=False)
    _, rows = read_manifest(out)
    assert len(rows) == len(BUNDLED_MR) == summary["slices"]
    # same pixels: in modality units the clean images agree (each series is normalized by its own degraded image,
    # whose noise differs, so the normalized arrays differ by an affine map)
    cleans = [np.asarray(load(out, r["clean_file"])) * (float(r["norm_hi"]) - float(r["norm_lo"]))
              + float(r["norm_lo"]) for r in rows]
    noisies = [np.asarray(load(out, r["noisy_file"])) for r in rows]
    for clean in cleans[1:]:
        np.testing.assert_allclose(clean, cleans[0], rtol=1e-5, atol=1e-3)
    assert not np.array_equal(noisies[0], noisies[1])  # noise seeded per series
    assert summary["patients"]["train"] >= 1 and summary["patients"]["val"] >= 1


# --- what is skipped --------------------------------------------------------------------------------------------

def test_mixed_tree_only_mr_reaches_the_manifest(tmp_path):
    expected = write_mixed_tree(tmp_path / "tree")
    out = tmp_path / "out"
    summary = run(tmp_path / "tree", out, small_cfg(), progress=False)
    _, rows = read_manifest(out)
    assert len(rows) == expected["mr_slices"]
    assert {r["patient_id"] for r in rows} == {"P1", "P2"}
    written = json.loads((out / "summary.json").read_text())
    assert written["files_skipped"] == expected["skips"]
    assert written["files_seen"] == written["files_used"] + sum(written["files_skipped"].values())
    assert written["files_used"] == expected["mr_files"]
    assert written["series_used"] == 2 and written["series_skipped"] == {}
    assert written["config"]["preprocess"]["image_size"] == 32 and written["seconds"] >= 0
    assert summary["files_skipped"] == expected["skips"]


def test_unreadable_series_is_a_counted_skip(tmp_path):
    root = tmp_path / "tree"
    write_mr_series(root / "good", "G1", n_slices=2, rows=24, cols=24)
    # A JPEG 2000 file whose fragments are not a JPEG 2000 codestream: the header is fine, decoding fails.
    bad = pydicom.dcmread(bundled("MR_small_jp2klossless.dcm"))
    bad.PixelData = encapsulate([b"not a jpeg 2000 codestream" * 8])
    bad.PatientID = "B1"
    (root / "bad").mkdir()
    bad.save_as(root / "bad" / "image.dcm")
    # A series whose images differ in size.
    for i, size in enumerate([16, 16, 20]):
        image_dataset(np.full((size, size), 100, np.uint16), patient_id="M1", series_uid=uid("mixed"),
                      instance=i + 1, position=i).save_as(root / f"mixed{i}.dcm", enforce_file_format=True)
    summary = run(root, tmp_path / "out", small_cfg(), progress=False)
    assert summary["series_used"] == 1 and summary["slices"] == 2
    assert summary["series_skipped"] == {"pixel read failed": 1, "mismatched shapes": 1}
    assert summary["files_skipped"] == {"pixel read failed": 1, "mismatched shapes": 3}


def test_missing_tags_use_fallbacks(tmp_path):
    folder = tmp_path / "tree" / "anonymous"
    folder.mkdir(parents=True)
    for i in range(2):
        ds = image_dataset(np.round(phantom(24, 24, seed=i)).astype(np.uint16), patient_id=None, series_uid=None,
                           instance=i + 1, position=i)
        del ds.SOPInstanceUID, ds.StudyInstanceUID
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    summary = run(tmp_path / "tree", tmp_path / "out", small_cfg(), progress=False)
    _, rows = read_manifest(tmp_path / "out")
    assert len(rows) == 2 and rows[0]["series_uid"] == "folder:anonymous"
    assert rows[0]["patient_id"].startswith("anon-")
    assert summary["series_notes"] == {"patient_id from study/folder": 1, "series_uid from folder": 1}


def test_layouts_that_cannot_be_told_apart_are_skipped_not_fatal(tmp_path):
    """Indexing a tree with a NaN slice position, a Dixon-like series (water and fat images at every position and
    time point, one acquisition time), a DCE whose temporal tag never changes, and a rescale to NaN: one bad
    series never stops the run, each is laid out or skipped with its reason."""
    root = tmp_path / "tree"
    # (temporal tag, position mm, acquisition time, acquisition number, image kind); positions 0.002 mm apart
    # are one position
    kinds = {"nan": [(0, 2.5 * z, "100000", 1, "W") for z in range(3)],
             "dixon": [(t, 2.5 * z, f"1{t}0000", t, kind) for t in (1, 2) for z in range(3) for kind in "WF"],
             "constant": [(1, 2.5 * z + 0.001 * t, f"1{t}0000", 1, "W") for t in (1, 2) for z in range(3)],
             "dummy_times": [(0, 2.5 * z, "100000", t, "W") for t in (1, 2) for z in range(3)]}
    for name, images in kinds.items():
        (root / name).mkdir(parents=True)
        for n, (t, z, time, number, kind) in enumerate(images):
            ds = image_dataset(textured((400 if kind == "W" else 40) + n), patient_id="L1",
                               series_uid=uid(name), instance=n + 1, position=z, temporal=t or None,
                               acquisition_time=time, slope=float("nan") if name == "nan" and n == 0 else 1.0)
            ds.AcquisitionNumber = number
            if name == "nan":
                ds.ImagePositionPatient = ["NaN", "NaN", "NaN"]
            ds.save_as(root / name / f"{n}.dcm", enforce_file_format=True)
    series, skipped, _ = index_tree(root)
    assert skipped == {REPEATED_POSITION_REASON: 12}  # the Dixon images
    layouts = {s.series_uid: s.layout for s in series}
    assert layouts[uid("constant")] == [(t, k) for t in range(2) for k in range(3)]  # by acquisition time
    assert layouts[uid("dummy_times")] == [(t, k) for t in range(2) for k in range(3)]  # by acquisition number
    assert layouts[uid("nan")] == [(0, 0), (0, 1), (0, 2)]  # no position: numbered in order
    summary = run(root, tmp_path / "out", small_cfg(), progress=False)
    assert summary["series_used"] == 2
    assert summary["series_skipped"] == {REPEATED_POSITION_REASON: 1, "pixel read failed": 1}
    assert "non-finite values after rescale" in json.dumps(summary)


def test_padding_is_no_image_in_training_as_in_enhance(tmp_path):
    """PixelPaddingValue pixels take no part in the normalization and reach the network as 0 in both arrays, as
    enhance.py gives them (test_enhance's padding test): stored -2000 would otherwise become a bright Rician border
    in the degraded input and raise norm_hi."""
    (tmp_path / "tree").mkdir()
    src = pydicom.dcmread(padded_mr_file(tmp_path / "tree" / "padded.dcm", padding=-2000, border=6))
    padded = src.pixel_array == -2000
    run(tmp_path / "tree", tmp_path / "out", small_cfg("preprocess.image_size=null"), progress=False)
    _, rows = read_manifest(tmp_path / "out")
    for column in ("clean_file", "noisy_file"):
        array = load(tmp_path / "out", rows[0][column])
        assert padded.sum() > 0 and np.all(array[0][padded] == 0)
    tissue = np.percentile(src.pixel_array[~padded].astype(np.float32), 99.5)
    assert float(rows[0]["norm_hi"]) == pytest.approx(tissue, rel=0.1)  # 1.35x with the padding counted


def test_series_filter(tmp_path):
    root = tmp_path / "tree"
    write_mr_series(root / "a", "A1", n_slices=2, rows=24, cols=24, description="ax dyn DCE")
    write_mr_series(root / "b", "A1", n_slices=3, rows=24, cols=24, description="t2 tse", seed=1)
    series, skipped, _ = index_tree(root, series_filter="(?i)dce")
    assert [s.series_description for s in series] == ["ax dyn DCE"]
    assert skipped == {"series filter": 3}
    with pytest.raises(ConfigError, match="series_filter"):
        index_tree(root, series_filter="([unclosed")


# --- order, frames, rescale ------------------------------------------------------------------------------------

@pytest.mark.parametrize("temporal_tag", [True, False])
def test_dce_series_order_and_rescale(tmp_path, temporal_tag):
    """Two time points x three slices, files named in reverse; without TemporalPositionIdentifier the
    acquisition time orders the repeated positions. Slope/intercept are applied."""
    _, stored = write_mr_series(tmp_path, "D1", n_slices=3, rows=24, cols=24, time_points=2,
                                temporal_tag=temporal_tag, slope=0.5, intercept=-10)
    (series,), _, _ = index_tree(tmp_path)
    assert series.temporal_index == [1, 1, 1, 2, 2, 2] if temporal_tag else [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(read_series(series), stored * 0.5 - 10)


def test_enhanced_multiframe_mr_yields_one_row_per_frame(tmp_path):
    positions = [0, 5, 10, 0, 5, 10]
    temporal = [1, 1, 1, 2, 2, 2]
    slopes = [1.0, 2.0, 0.5, 1.0, 1.5, 3.0]
    intercepts = [0, -5, 10, 3, 0, -1]
    frames = np.stack([np.round(phantom(24, 32, seed=k)).astype(np.uint16) for k in range(6)])
    file_order = [4, 0, 5, 2, 1, 3]  # frames stored out of order: the reader must sort them
    folder = tmp_path / "tree"
    folder.mkdir()
    enhanced_mr_dataset(frames, positions, temporal, slopes, intercepts, file_order=file_order).save_as(
        folder / "enhanced.dcm", enforce_file_format=True)
    (series,), _, _ = index_tree(folder)
    assert len(series.frames) == 6 and series.rows == 24 and series.cols == 32
    expected = frames * np.asarray(slopes)[:, None, None] + np.asarray(intercepts)[:, None, None]
    np.testing.assert_allclose(read_series(series), expected, rtol=1e-6)

    out = tmp_path / "out"
    run(folder, out, small_cfg(), progress=False)
    _, rows = read_manifest(out)
    assert [int(r["slice_index"]) for r in rows] == list(range(6))
    assert len({r["sop_instance_uid"] for r in rows}) == 1  # one object, six frames
    assert load(out, rows[0]["clean_file"]).shape == (6, 32, 32)


# --- outputs: shapes, dtypes, ranges, geometry -------------------------------------------------------------------

@pytest.mark.parametrize("size,dtype", [(16, "float32"), (64, "float32"), (64, "float16")])
def test_arrays_shapes_dtypes_and_manifest(tmp_path, size, dtype):
    root = three_patient_tree(tmp_path / "tree")
    out = tmp_path / "out"
    run(root, out, small_cfg(f"preprocess.dtype={dtype}", size=size), progress=False)
    columns, rows = read_manifest(out)
    assert columns == MANIFEST_COLUMNS
    assert len(rows) == 9
    for row in rows:
        for column in ("clean_file", "noisy_file"):
            array = load(out, row[column])
            assert array.shape == (3, size, size) and array.dtype == np.dtype(dtype)
            assert np.isfinite(array).all()
        assert (int(row["rows"]), int(row["cols"])) == (24, 40)
        assert float(row["norm_hi"]) > float(row["norm_lo"])
        assert 0 < float(row["sigma_source"]) < 0.1 and float(row["sigma_added"]) > 0
        assert row["degrade_model"] == "field" and float(row["snr_ratio"]) == 0.5


def test_normalization_is_exactly_undone_and_not_clipped(tmp_path):
    root = three_patient_tree(tmp_path / "tree")
    out = tmp_path / "out"
    run(root, out, small_cfg(size=40), progress=False)  # 40 = the long side: no resampling
    (series, *_), _, _ = index_tree(root)
    raw = read_series(series)
    _, rows = read_manifest(out)
    row = next(r for r in rows if r["series_uid"] == series.series_uid)
    lo, hi = float(row["norm_lo"]), float(row["norm_hi"])
    clean = unresize_square(np.asarray(load(out, row["clean_file"])), (24, 40))
    np.testing.assert_allclose(clean * (hi - lo) + lo, raw, rtol=1e-5, atol=1e-3)
    assert clean.max() > 1 and clean.min() < 0  # the tails beyond the percentiles are kept
    noisy = unresize_square(np.asarray(load(out, row["noisy_file"])), (24, 40))
    # the range is the degraded series' (what inference has), mapped to [0, 1]
    assert np.percentile(noisy, 99.5) == pytest.approx(1, abs=1e-5)
    assert np.percentile(noisy, 0.5) == pytest.approx(0, abs=1e-5)
    padded = np.asarray(load(out, row["clean_file"]))[:, :8]  # rows added by pad_to_square
    noisy_padded = np.asarray(load(out, row["noisy_file"]))[:, :8]
    assert np.all(padded == -lo / (hi - lo)) and np.all(noisy_padded == padded)  # zero signal


def test_non_square_input_is_padded_not_stretched(tmp_path):
    image = np.zeros((20, 40), np.float32)
    image[6:14, 10:30] = 1.0  # 8 tall, 20 wide
    for size in (20, 40, 80):
        square = resize_square(image[None], size)[0]
        ys, xs = np.nonzero(square > 0.5)
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert width / height == pytest.approx(20 / 8, rel=0.15), size
    assert pad_to_square(image).shape == (40, 40)
    assert pad_to_square(image, value=-1)[0, 0] == -1
    # Through the pipeline too: a rectangle in a 20 x 40 acquisition stays 2.5 times as wide as tall.
    folder = tmp_path / "tree"
    folder.mkdir()
    pixels = np.round(np.abs(1000 * image + 5 * (np.random.default_rng(0).standard_normal((20, 40))
                                                 + 1j * np.random.default_rng(1).standard_normal((20, 40)))))
    image_dataset(pixels.astype(np.uint16), patient_id="R1", series_uid=uid("rect")).save_as(
        folder / "rect.dcm", enforce_file_format=True)
    run(folder, tmp_path / "out", small_cfg(size=80), progress=False)
    clean = np.load(next((tmp_path / "out" / "arrays").glob("*_clean.npy")))[0]
    ys, xs = np.nonzero(clean > 0.5)
    assert (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1) == pytest.approx(2.5, rel=0.15)


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (33, 33), (17, 30)])
def test_unresize_square_is_the_geometric_inverse(shape):
    y, x = np.mgrid[:shape[0], :shape[1]]
    smooth = np.exp(-((y - shape[0] * 0.4) ** 2 + (x - shape[1] * 0.6) ** 2) / 60.0).astype(np.float32)
    side = max(shape)
    np.testing.assert_array_equal(unresize_square(resize_square(smooth[None], side), shape)[0], smooth)
    back = unresize_square(resize_square(smooth[None], 2 * side), shape)[0]
    assert back.shape == shape
    np.testing.assert_allclose(back, smooth, atol=0.03)
    assert unresize_square(resize_square(smooth[None], side // 2 + 1)[0], shape).shape == shape


# --- split ---------------------------------------------------------------------------------------------------

def test_split_patients_is_seeded_and_a_pure_function_of_each_patient():
    patients = [f"P{i:03d}" for i in range(200)]
    split = split_patients(patients, [0.6, 0.2, 0.2], seed=0)
    assert split == split_patients(list(reversed(patients)), [0.6, 0.2, 0.2], seed=0)  # input order irrelevant
    counts = {name: sorted(split.values()).count(name) for name in ("train", "val", "test")}
    assert 100 <= counts["train"] <= 140 and 25 <= counts["val"] <= 55 and 25 <= counts["test"] <= 55
    assert split_patients(patients, [0.6, 0.2, 0.2], seed=1) != split  # the seed matters
    for p in patients[:20]:  # each patient's split depends only on its own hash
        assert split_patients([p], [0.6, 0.2, 0.2], seed=0)[p] == split[p]
    with pytest.raises(ConfigError, match="preprocess.split"):
        split_patients(patients, [0.7, 0.3, 0.3], seed=0)
    with pytest.raises(ConfigError, match="preprocess.split"):
        split_patients(patients, [0.0, 0.5, 0.5], seed=0)


def test_adding_patients_never_moves_an_existing_one():
    patients = [f"P{i:03d}" for i in range(50)]
    before = split_patients(patients, [0.6, 0.2, 0.2], seed=3)
    after = split_patients(patients + [f"NEW{i}" for i in range(50)], [0.6, 0.2, 0.2], seed=3)
    assert all(after[p] == before[p] for p in patients)


def test_moving_a_boundary_moves_only_the_patients_it_crosses():
    patients = [f"P{i:03d}" for i in range(300)]
    old = split_patients(patients, [0.6, 0.2, 0.2], seed=0)
    new = split_patients(patients, [0.6, 0.3, 0.1], seed=0)  # val/test boundary 0.8 -> 0.9
    moved = {p for p in patients if old[p] != new[p]}
    assert moved and all(old[p] == "test" and new[p] == "val" for p in moved)
    assert moved == {p for p in patients if 0.8 <= patient_hash(p, 0) < 0.9}
    assert all(new[p] == "train" for p in patients if old[p] == "train")  # train is untouched


def test_small_cohorts_are_told_what_is_possible():
    assert any("at least 3" in n for n in split_warnings(split_patients(["a", "b"], [0.6, 0.2, 0.2], 0),
                                                         [0.6, 0.2, 0.2]))
    thesis = split_patients([f"P{i}" for i in range(10)], [0.7, 0.3, 0.0], seed=0)
    assert "test" not in thesis.values()
    assert not any("test" in n for n in split_warnings(thesis, [0.7, 0.3, 0.0]))  # no test asked, none missing
    # two patients that the hash puts in train and test: no val patient, so main.py cannot train; not "can validate"
    notes = split_warnings({"a": "train", "b": "test"}, [0.6, 0.2, 0.2])
    assert not any("can train and validate" in n for n in notes) and any("cannot train" in n for n in notes)
    assert any("can train and validate" in n for n in split_warnings({"a": "train", "b": "val"}, [0.6, 0.2, 0.2]))


def test_check_patient_split_refuses_overlap():
    check_patient_split([{"patient_id": "a", "split": "train"}, {"patient_id": "b", "split": "val"},
                         {"patient_id": "a", "split": "train"}])
    with pytest.raises(SplitError, match="'a'"):
        check_patient_split([{"patient_id": "a", "split": "train"}, {"patient_id": "a", "split": "val"}])


def test_manifest_split_is_by_patient_and_repeatable(tmp_path):
    root = three_patient_tree(tmp_path / "tree")
    run(root, tmp_path / "one", small_cfg(), progress=False)
    run(root, tmp_path / "two", small_cfg(), progress=False)
    _, rows = read_manifest(tmp_path / "one")
    by_patient = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    assert {s for v in by_patient.values() for s in v} <= {"train", "val", "test"}
    assert (tmp_path / "one" / "manifest.csv").read_text() == (tmp_path / "two" / "manifest.csv").read_text()


# --- resume ---------------------------------------------------------------------------------------------------

def snapshot(out):
    return {p.relative_to(out): p.stat().st_mtime_ns for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "summary.json"}


def test_rerun_writes_nothing_new(tmp_path):
    root = three_patient_tree(tmp_path / "tree")
    out = tmp_path / "out"
    run(root, out, small_cfg(), progress=False)
    before = snapshot(out)
    summary = run(root, out, small_cfg(), progress=False)
    assert snapshot(out) == before
    assert summary["series_reused"] == 3 and summary["series_processed"] == 0
    # A setting the arrays do not depend on reuses them; one they depend on recomputes them.
    assert run(root, out, small_cfg("preprocess.split=[0.5,0.5,0.0]"), progress=False)["series_reused"] == 3
    changed = run(root, out, small_cfg("degrade.snr_ratio=0.7"), progress=False)
    assert changed["series_processed"] == 3
    _, rows = read_manifest(out)
    assert {r["config_hash"] for r in rows} == {changed["config_hash"]}


def test_output_inside_the_tree_is_not_indexed(tmp_path):
    root = three_patient_tree(tmp_path / "tree", n_slices=2)
    first = run(root, root / "processed", small_cfg(), progress=False)
    second = run(root, root / "processed", small_cfg(), progress=False)
    assert first["files_seen"] == second["files_seen"] == 6 and second["files_skipped"] == {}


def test_interrupted_run_resumes_to_the_same_arrays(tmp_path, monkeypatch):
    root = three_patient_tree(tmp_path / "tree")
    run(root, tmp_path / "reference", small_cfg(), progress=False)

    # Interrupt the run while the second series is being written (after its clean array, before its noisy
    # one), as Ctrl-C would.
    calls = {"n": 0}
    save = preprocess._save_square

    def interrupting_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return save(*args, **kwargs)

    monkeypatch.setattr(preprocess, "_save_square", interrupting_save)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(root, out, small_cfg(), progress=False)
    assert not (out / "manifest.csv").exists()
    assert len(list((out / "arrays").glob("*.json"))) == 1
    monkeypatch.setattr(preprocess, "_save_square", save)

    summary = run(root, out, small_cfg(), progress=False)
    assert summary["series_reused"] == 1 and summary["series_processed"] == 2
    assert not list((out / "arrays").glob(".tmp-*"))
    reference = sorted(p.name for p in (tmp_path / "reference" / "arrays").iterdir())
    assert sorted(p.name for p in (out / "arrays").iterdir()) == reference
    for name in reference:
        assert (out / "arrays" / name).read_bytes() == (tmp_path / "reference" / "arrays" / name).read_bytes()
    assert (out / "manifest.csv").read_text() == (tmp_path / "reference" / "manifest.csv").read_text()


def test_interrupted_rerun_with_new_settings_is_not_taken_for_the_old_one(tmp_path, monkeypatch):
    root = three_patient_tree(tmp_path / "tree")
    out = tmp_path / "out"
    run(root, out, small_cfg(), progress=False)
    reference = {p.name: p.read_bytes() for p in (out / "arrays").iterdir()}
    save = preprocess._save_square
    calls = {"n": 0}

    def interrupting_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the first series' clean array is rewritten with the new settings, then Ctrl-C
            raise KeyboardInterrupt
        return save(*args, **kwargs)

    monkeypatch.setattr(preprocess, "_save_square", interrupting_save)
    with pytest.raises(KeyboardInterrupt):
        run(root, out, small_cfg("degrade.snr_ratio=0.7"), progress=False)
    assert not (out / "manifest.csv").exists()  # the old manifest no longer describes the arrays
    monkeypatch.setattr(preprocess, "_save_square", save)
    summary = run(root, out, small_cfg(), progress=False)
    assert summary["series_processed"] == 1 and summary["series_reused"] == 2
    assert {p.name: p.read_bytes() for p in (out / "arrays").iterdir()} == reference


def test_worker_processes_give_identical_results(tmp_path):
    root = three_patient_tree(tmp_path / "tree")
    run(root, tmp_path / "one", small_cfg(), progress=False)
    summary = run(root, tmp_path / "two", small_cfg(), workers=2, progress=False)
    assert summary["workers"] == 2
    for path in sorted((tmp_path / "one" / "arrays").iterdir()):
        assert path.read_bytes() == (tmp_path / "two" / "arrays" / path.name).read_bytes()
    assert (tmp_path / "one" / "manifest.csv").read_text() == (tmp_path / "two" / "manifest.csv").read_text()


# --- CLI --------------------------------------------------------------------------------------------------------

def cli(*args):
    return subprocess.run([sys.executable, "preprocessing.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_cli_nonexistent_root_exits_2_with_one_line(tmp_path):
    result = cli("--dicom-root", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing" in lines[0] and "does not exist" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_tree_without_mr_exits_2(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    shutil.copy(bundled("CT_small.dcm"), root / "ct.dcm")
    (root / "readme.txt").write_text("no images here")
    result = cli("--dicom-root", str(root), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no usable MR image" in lines[0] and "modality CT: 1" in lines[0]


def test_cli_writes_outputs(tmp_path):
    root = three_patient_tree(tmp_path / "tree", n_slices=2)
    result = cli("--dicom-root", str(root), "--out", str(tmp_path / "out"), "--set", "preprocess.image_size=16")
    assert result.returncode == 0, result.stderr
    assert "6 slices of 3 series" in result.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["slices"] == 6 and summary["config"]["preprocess"]["image_size"] == 16


def _children(pid):
    """Process ids whose parent is pid (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_workers_end_when_preprocessing_is_killed(tmp_path):
    """kill -9 of a `--workers 2` run left both workers (and multiprocessing's resource tracker) running for
    good: each worker now ends within seconds of its parent."""
    import signal
    import subprocess
    import sys
    import time

    from dicom_fixtures import write_mr_series

    for p in range(4):
        write_mr_series(tmp_path / "tree" / f"p{p}", f"P{p}", n_slices=4, rows=32, cols=32)
    run = subprocess.Popen([sys.executable, "preprocessing.py", "--dicom-root", str(tmp_path / "tree"), "--out",
                            str(tmp_path / "out"), "--workers", "2"], cwd=Path(__file__).resolve().parents[1],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(_children(run.pid)) < 2 and time.time() < deadline and run.poll() is None:
        time.sleep(0.05)
    children = _children(run.pid)
    assert len(children) >= 2, "the workers never started"
    time.sleep(0.5)
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.time() + 20
    while [c for c in children if Path(f"/proc/{c}").exists()] and time.time() < deadline:
        time.sleep(0.2)
        for c in children:  # reap what the test's own process inherited, if anything
            try:
                os.waitpid(c, os.WNOHANG)
            except ChildProcessError:
                pass
    alive = [c for c in children if Path(f"/proc/{c}").exists()
             and Path(f"/proc/{c}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive, f"workers still running: {alive}"
