"""demo_data.py: a tiny synthetic QIN-BREAST tree, read back with pydicom and checked against the Retriever's
layout, the DCE physics (lesion enhances, fat does not), the native noise level and determinism."""

import csv
import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from breastmri.config import DEFAULTS
from breastmri.simulate import acquisition, demo_dicom, demo_tree, phantom, protocol, scanner

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(patients=3, seed=0, slices=4, time_points=6, matrix=64)
# The columns of the NBIA Data Retriever's metadata.csv, written out here so the test can fail.
RETRIEVER_COLUMNS = ["Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID",
                     "Study UID", "Study Description", "Study Date", "Series Description", "Manufacturer",
                     "Modality", "SOP Class Name", "SOP Class UID", "Number of Images", "File Size",
                     "File Location", "Download Timestamp"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "tree"
    summary = demo_tree.make_demo_tree(out, extras=True, **SMALL)
    return out, summary


@pytest.fixture(scope="module")
def rows(tree):
    with open(tree[0] / "metadata.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def datasets(tree):
    """Every .dcm file of the tree, read with pixel data: {path: Dataset}."""
    return {p: pydicom.dcmread(p) for p in sorted((tree[0] / "QIN-BREAST").rglob("*.dcm"))}


def modality_values(ds):
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def dce_volume(series_dir, slices):
    """(time_points, slices, H, W) modality values, from InstanceNumber read as documented (time-major)."""
    dss = sorted((pydicom.dcmread(p) for p in series_dir.glob("*.dcm")), key=lambda d: int(d.InstanceNumber))
    volume = np.stack([modality_values(d) for d in dss])
    return volume.reshape((-1, slices) + volume.shape[1:]), dss


def test_every_file_reads_back_and_mr_images_have_the_declared_shape(datasets):
    assert len(datasets) > 100
    n_mr = 0
    for path, ds in datasets.items():
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert "SYNTHETIC" in str(ds.PatientName) and "SYNTHETIC" in ds.Manufacturer
        if ds.Modality != "MR":
            continue
        n_mr += 1
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns) == (SMALL["matrix"], SMALL["matrix"])
        assert pixels.dtype == np.uint16 and pixels.max() <= 2 ** ds.BitsStored - 1
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
        assert float(ds.MagneticFieldStrength) == 3.0 and float(ds.RescaleSlope) != 1.0
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert n_mr > 0


def test_layout_and_metadata_csv_agree_with_the_headers(tree, rows, datasets):
    out, summary = tree
    columns, records = rows
    assert columns == RETRIEVER_COLUMNS
    listed = set()
    for row in records:
        folder = out / row["File Location"]
        assert row["File Location"].startswith("./QIN-BREAST/") and folder.is_dir()
        listed.add(folder.resolve())
        files = sorted(folder.glob("*.dcm"))
        assert len(files) == int(row["Number of Images"]) > 0
        assert [f.name for f in files] == [f"1-{i:03d}.dcm" for i in range(1, len(files) + 1)]
        assert re.fullmatch(r"\d+\.\d\d (KB|MB)", row["File Size"])
        for i, path in enumerate(files, start=1):
            ds = datasets[path]
            assert ds.SeriesInstanceUID == row["Series UID"] and ds.StudyInstanceUID == row["Study UID"]
            assert ds.PatientID == row["Subject ID"] and ds.Modality == row["Modality"]
            assert ds.SOPClassUID == row["SOP Class UID"] and ds.SeriesDescription == row["Series Description"]
            assert int(ds.InstanceNumber) == i
        # <PatientID>/<MM-DD-YYYY>-NA-<StudyDescription>-<5>/<SeriesNumber %.6f>-<SeriesDescription>-<5>
        series_dir, study_dir, patient_dir = folder.name, folder.parent.name, folder.parent.parent.name
        assert patient_dir == ds.PatientID and re.fullmatch(r"QIN-BREAST-01-\d{4}", patient_dir)
        study_date = f"{ds.StudyDate[4:6]}-{ds.StudyDate[6:8]}-{ds.StudyDate[:4]}"
        assert row["Study Date"] == study_date
        assert study_dir == (f"{study_date}-NA-{re.sub(r'[^A-Za-z0-9 .-]', '', ds.StudyDescription)}-"
                             f"{ds.StudyInstanceUID[-5:]}")
        assert series_dir == (f"{float(ds.SeriesNumber):.6f}-{ds.SeriesDescription.replace('_', '')}-"
                              f"{ds.SeriesInstanceUID[-5:]}")
        assert ds.SeriesInstanceUID.startswith("2.25.") and ds.StudyInstanceUID.startswith("2.25.")
    on_disk = {p.parent.resolve() for p in datasets}
    assert listed == on_disk
    assert sum(int(r["Number of Images"]) for r in records) == len(datasets) == summary["files"]
    assert len({r["Series UID"] for r in records}) == len(records)


def test_modality_mix_is_mr_ct_pet_and_a_non_image_object(rows, datasets):
    _, records = rows
    assert {r["Modality"] for r in records} == {"MR", "CT", "PT", "SR"}
    by_modality = {}
    for ds in datasets.values():
        by_modality.setdefault(ds.Modality, []).append(ds)
    assert all("PixelData" not in ds for ds in by_modality["SR"])
    assert all(ds.Units == "BQML" and ds.SeriesDescription == "PET AC 3DWB" for ds in by_modality["PT"])
    assert all(ds.SeriesDescription == "CTAC" for ds in by_modality["CT"])
    assert min(modality_values(ds).min() for ds in by_modality["CT"]) == -3024  # padded air
    descriptions = {ds.SeriesDescription for ds in by_modality["MR"]}
    assert "multi-flip_T1-map_smartTX" in descriptions and descriptions & {"dynamic_smartTX", "dynamic"}


def test_dce_series_structure_and_timing(rows, datasets, tree):
    out, summary = tree
    _, records = rows
    dce = [r for r in records if r["Series Description"] in ("dynamic_smartTX", "dynamic")]
    per_patient = {}
    for r in dce:
        per_patient.setdefault(r["Subject ID"], set()).add(r["Study Date"])
    assert len(per_patient) == SMALL["patients"]
    assert all(len(dates) in (2, 3) for dates in per_patient.values())  # 2-3 visits on different dates
    t_points, slices = SMALL["time_points"], SMALL["slices"]
    for r in dce:
        assert int(r["Number of Images"]) == t_points * slices
        volume, dss = dce_volume(out / r["File Location"], slices)
        assert {int(d.NumberOfTemporalPositions) for d in dss} == {t_points}
        normal = np.cross(np.array(dss[0].ImageOrientationPatient[:3], float),
                          np.array(dss[0].ImageOrientationPatient[3:], float))
        for t in range(t_points):
            frame = dss[t * slices:(t + 1) * slices]
            assert {int(d.TemporalPositionIdentifier) for d in frame} == {t + 1}
            along = [float(np.dot(np.array(d.ImagePositionPatient, float), normal)) for d in frame]
            assert np.allclose(np.diff(along), float(frame[0].SliceThickness))
        acquisition = [dss[t * slices].AcquisitionTime for t in range(t_points)]
        seconds = [int(a[:2]) * 3600 + int(a[2:4]) * 60 + float(a[4:]) for a in acquisition]
        assert np.allclose(np.diff(seconds), np.diff(protocol.frame_times(t_points)[0]), atol=1e-3)
        assert [float(d.ImageOrientationPatient[i]) for d in dss[:1] for i in range(6)] == [0, 1, 0, 0, 0, -1]
        assert float(dss[0].SliceThickness) == 5.0 and abs(float(dss[0].PixelSpacing[0]) - 220 / 64) < 1e-3
        assert (float(dss[0].RepetitionTime), float(dss[0].EchoTime)) == (7.9, 4.6)
    assert summary["frame_times_s"] == [0.0, 16.4, 32.8, 65.6, 229.6, 393.6]  # 3 before contrast, then sampled


def test_lesion_enhances_while_fat_stays_flat(tree):
    out, summary = tree
    n_pre = summary["pre_contrast_frames"]
    checked = 0
    for patient in summary["ground_truth"]:
        visit = patient["visits"][0]
        if visit["lesion"] is None:
            continue
        volume, _ = dce_volume(out / visit["dce_dir"], SMALL["slices"])
        truth = phantom.phantom(patient["patient_id"], 0, seed=SMALL["seed"], slices=SMALL["slices"],
                                  matrix=SMALL["matrix"])
        lesion = truth["fractions"]["lesion"] > 0.9
        fat = truth["fractions"]["fat"] > 0.98
        assert lesion.sum() >= 3 and fat.sum() > 100
        lesion_curve = np.array([frame[lesion].mean() for frame in volume])
        # the fat's noise-free curve of a still patient (the motion of the DICOM series moves tissue edges)
        still = acquisition.dce_series(truth, summary["frame_times_s"], visit["bolus_arrival_s"],
                                       np.random.default_rng(0))[1]
        fat_curve = np.array([frame[fat].mean() for frame in still])
        assert lesion_curve[n_pre:].max() >= 1.5 * lesion_curve[:n_pre].mean()
        assert np.all(np.abs(fat_curve / fat_curve[:n_pre].mean() - 1) < 0.05)  # the heart's ghosts, a few %
        checked += 1
    assert checked >= 2  # 3 of 4 patients have a lesion


def test_native_noise_sigma_from_the_air_background(tree):
    """Air of a sum-of-squares image of N channels follows a chi law with 2N degrees of freedom: E[x^2] = 2N sigma^2,
    sigma the visit's noise per channel (per-patient spread around NOISE_SIGMA)."""
    out, summary = tree
    visit = summary["ground_truth"][0]["visits"][0]
    sigma = visit["noise_sigma_modality"]
    assert 0.6 * phantom.NOISE_SIGMA < sigma < 1.5 * phantom.NOISE_SIGMA
    volume, _ = dce_volume(out / visit["dce_dir"], SMALL["slices"])
    truth, _ = truth_of(out / visit["dce_dir"])
    air = truth.reshape(volume.shape) < 0.05 * sigma  # no signal and no ghost
    assert air.sum() > 1000
    chi_sigma = np.sqrt(np.mean(volume[air] ** 2) / (2 * phantom.N_COILS))
    assert chi_sigma == pytest.approx(sigma, rel=0.1)
    assert volume[air].mean() > 3 * sigma  # far above a single channel's Rayleigh mean, 1.25 sigma
    assert summary["noise_sigma_stored"] * summary["rescale_slope"] == pytest.approx(summary["noise_sigma_modality"])


def test_same_seed_gives_identical_pixels_and_other_seeds_other_anatomy(tree, tmp_path):
    out, _ = tree
    again = tmp_path / "again"
    demo_tree.make_demo_tree(again, **dict(SMALL, patients=1), extras=True)
    first = sorted((again / "QIN-BREAST").rglob("*.dcm"))
    assert first
    for path in first:  # same UIDs, headers and pixel data: the files are byte-identical
        assert path.read_bytes() == (out / path.relative_to(again)).read_bytes()

    other = tmp_path / "other"
    demo_tree.make_demo_tree(other, **dict(SMALL, patients=1, seed=1))
    a = phantom.phantom(0, 0, seed=0, slices=SMALL["slices"], matrix=SMALL["matrix"])["labels"]
    b = phantom.phantom(0, 0, seed=1, slices=SMALL["slices"], matrix=SMALL["matrix"])["labels"]
    assert np.mean(a != b) > 0.05
    dce = lambda root: sorted((root / "QIN-BREAST").glob("*/*/801.000000-*/1-001.dcm"))[0]
    assert not np.array_equal(pydicom.dcmread(dce(out)).pixel_array, pydicom.dcmread(dce(other)).pixel_array)


def test_ensure_demo_tree_reuses_and_regenerates(tmp_path):
    tiny = dict(patients=1, seed=0, slices=2, time_points=2, matrix=32)
    out = tmp_path / "demo_dicom"
    assert demo_tree.ensure_demo_tree(out, **tiny) == out
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert len(stamps) > 5
    demo_tree.ensure_demo_tree(out, **tiny)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_dicom"]  # no temporary folders left

    demo_tree.ensure_demo_tree(out, **dict(tiny, seed=1))
    record = demo_tree._read_record(out)
    assert record["params"]["seed"] == 1
    assert {p.relative_to(out) for p in out.rglob("*.dcm")}.isdisjoint({p.relative_to(out) for p in stamps})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_dicom"]

    foreign = tmp_path / "my_scans"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not a demo tree")
    with pytest.raises(FileExistsError, match="not a demo tree"):
        demo_tree.ensure_demo_tree(foreign, **tiny)
    assert (foreign / "keep.txt").exists()


def test_invalid_parameters_are_explained(tmp_path):
    with pytest.raises(ValueError, match="patients"):
        demo_tree.make_demo_tree(tmp_path / "a", patients=0)
    with pytest.raises(ValueError, match="time_points"):
        demo_tree.make_demo_tree(tmp_path / "b", time_points=1)
    with pytest.raises(TypeError, match="unknown"):
        demo_tree.ensure_demo_tree(tmp_path / "c", slice=3)
    with pytest.raises(ValueError, match="kspace"):
        demo_tree.make_demo_tree(tmp_path / "d", kspace="half")


def test_timing_pattern_and_defaults():
    times, arrival, n_pre = protocol.frame_times(25)  # QIN-BREAST: 25 frames 16.4 s apart, 4 before contrast
    assert n_pre == 4 and len(times) == 25 and times[3] < arrival < times[4]
    assert np.allclose(np.diff(times), 16.4)
    short, _, n_short = protocol.frame_times(8)  # fewer frames sample the same schedule up to its last frame
    assert n_short == 4 and np.allclose(short[:4], times[:4]) and short[-1] == times[-1]
    assert set(np.round(short, 3)) <= set(np.round(times, 3))
    assert np.allclose(protocol.frame_times(2)[0], [0.0, times[4]])  # one before, one after contrast
    params = inspect.signature(demo_tree.make_demo_tree).parameters
    for key in ("patients", "seed", "slices", "time_points", "kspace"):
        assert params[key].default == DEFAULTS["demo"][key]
    assert inspect.signature(demo_tree.ensure_demo_tree).parameters["out_dir"].default == DEFAULTS["demo"]["out"]


def test_cli_writes_the_tree_and_the_preview(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "demo_data.py", "--out", str(out), "--patients", "1", "--slices", "3",
                             "--time-points", "4", "--matrix", "64", "--preview"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    png = out / "preview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert str(png) in result.stdout and "files" in result.stdout and "MB" in result.stdout
    bad = subprocess.run([sys.executable, "demo_data.py", "--out", str(tmp_path / "x"), "--full", "--slices", "3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--full" in bad.stderr


# --- second release: truth, texture, motion ---------------------------------------------------------------------

def truth_of(series_dir):
    """(truth float32 (n, H, W) in modality units, SOPInstanceUIDs) from the hidden sidecar of a series."""
    import json

    index = json.loads((series_dir / demo_dicom.TRUTH_INDEX).read_text())
    return np.load(series_dir / demo_dicom.TRUTH_FILE), index["sop_instance_uids"]


def test_truth_sidecar_is_the_signal_the_noise_was_added_to(tree):
    dce = sorted(p.parent for p in (tree[0] / "QIN-BREAST").rglob(demo_dicom.TRUTH_FILE))
    assert dce and all("dynamic" in p.name for p in dce)  # DCE series only, each with its truth
    truth, uids = truth_of(dce[0])
    dss = {d.SOPInstanceUID: d for d in map(pydicom.dcmread, dce[0].glob("*.dcm"))}
    assert sorted(uids) == sorted(dss) and truth.shape == (len(dss), SMALL["matrix"], SMALL["matrix"])
    measured = np.stack([modality_values(dss[u]) for u in uids])
    visit = next(v for p in tree[1]["ground_truth"] for v in p["visits"] if dce[0].as_posix().endswith(v["dce_dir"]))
    sigma = visit["noise_sigma_modality"]
    bright = truth > 15 * sigma  # ~Gaussian there: magnitude - truth is the noise, plus the sum of squares' bias
    residual = (measured - truth)[bright]
    bias = (2 * phantom.N_COILS - 1) * sigma ** 2 / (2 * truth[bright])  # noncentral chi, high-SNR expansion
    assert abs((residual - bias).mean()) < 0.1 * sigma
    assert residual.std() == pytest.approx(sigma, rel=0.1)


def test_mixed_kspace_acquires_a_band_limit_per_visit(tmp_path):
    """kspace "mixed": every visit acquires one of protocol.BAND_LIMITS, says so in AcquisitionMatrix, and its
    noise is correlated between neighbouring pixels as that band limit makes it (none for the full matrix)."""
    summary = demo_tree.make_demo_tree(tmp_path / "tree", kspace="mixed", **dict(SMALL, patients=4, time_points=2))
    visits = [v for p in summary["ground_truth"] for v in p["visits"]]
    drawn = [None if v["acquired_fraction"] is None else tuple(v["acquired_fraction"]) for v in visits]
    assert set(drawn) <= set(protocol.BAND_LIMITS) and len(set(drawn)) >= 2
    assert None in drawn and protocol.ACQUIRED_FRACTION in drawn
    for visit, fraction in zip(visits, drawn):
        series_dir = tmp_path / "tree" / visit["dce_dir"]
        truth, uids = truth_of(series_dir)
        dss = {d.SOPInstanceUID: d for d in map(pydicom.dcmread, series_dir.glob("*.dcm"))}
        matrix = [int(x) for x in dss[uids[0]].AcquisitionMatrix]
        assert matrix[1:3] == list(scanner.acquisition_matrix(SMALL["matrix"], SMALL["matrix"], fraction))
        residual = np.stack([modality_values(dss[u]) for u in uids]) - truth
        residual[truth < 15 * visit["noise_sigma_modality"]] = np.nan  # ~Gaussian only in tissue
        pairs = np.stack([residual[..., :-1].ravel(), residual[..., 1:].ravel()])
        pairs = pairs[:, np.isfinite(pairs).all(axis=0)]
        correlation = np.corrcoef(pairs)[0, 1]
        assert correlation < 0.15 if fraction is None else correlation > 0.3, (fraction, correlation)


def gland_beta(texture_beta, patients=4):
    """Pooled spectrum_beta of the largest square patches inside the gland envelope of a few demo patients."""
    from scipy import ndimage

    patches = []
    for index in range(patients):
        ph = phantom.phantom(index, 0, slices=8, matrix=192, texture_beta=texture_beta)
        envelope, gland = ph["gland_envelope"] > 0.99, ph["fractions"]["gland"]
        for k in range(len(gland)):
            dist = ndimage.distance_transform_cdt(envelope[k], metric="chessboard")
            if dist.max() >= 17:
                i, j = np.unravel_index(dist.argmax(), dist.shape)
                patches.append(gland[k, i - 16:i + 16, j - 16:j + 16])
    assert len(patches) >= 8
    return phantom.spectrum_beta(np.stack(patches), px=protocol.FOV_MM / 192)


@pytest.mark.parametrize("beta", [1.8, 1.2])
def test_gland_texture_has_the_configured_power_law(beta):
    assert gland_beta(beta) == pytest.approx(beta, abs=0.3)


def test_spectrum_beta_of_a_known_field():
    field = phantom.power_law_field(np.random.default_rng(1), (6, 96, 96), 2.5, 1.0)
    assert phantom.spectrum_beta(field) == pytest.approx(2.5, abs=0.2)


@pytest.mark.parametrize("motion_mm", [0.0, 4.5])
def test_dce_frames_move_by_the_configured_motion(tmp_path, motion_mm):
    """The patient holds still before contrast and jumps when it is injected (the first post-contrast frame), by
    at most motion_mm; with motion_mm 0 the breast never moves (the chest still breathes)."""
    from skimage.registration import phase_cross_correlation
    params = dict(SMALL, patients=1, time_points=6, matrix=96, motion_mm=motion_mm)
    summary = demo_tree.make_demo_tree(tmp_path / "t", **params)
    visits = summary["ground_truth"][0]["visits"]
    truth, _ = truth_of(tmp_path / "t" / visits[0]["dce_dir"])
    frames = truth.reshape(6, SMALL["slices"], 96, 96)  # time-major; frames 0-2 are before contrast
    px = protocol.FOV_MM / 96
    for visit in visits:
        assert max(visit["motion_max_mm"]) <= motion_mm + 1e-6 and visit["through_plane_mm"][0] == 0
    ph = phantom.phantom(0, 0, seed=SMALL["seed"], slices=SMALL["slices"], matrix=96)
    k = SMALL["slices"] // 2
    front = int(np.argmax(ph["chest"][k].max(axis=0) > 0)) - 8  # the columns in front of the (breathing) chest
    shifts = [np.hypot(*phase_cross_correlation(frames[0, k, :, :front], frames[t, k, :, :front],
                                                upsample_factor=20)[0]) * px for t in (1, 3)]
    if motion_mm == 0:  # the contrast reaching the heart and its ghosts move the phase correlation a little
        assert max(shifts) < 0.3, shifts
        return
    assert shifts[0] < 0.3 and 0.5 < shifts[1] <= motion_mm + 0.2, shifts


def test_lesion_mask_and_noise_free_curve_are_exported_per_sop_instance(tree):
    """Every DCE series with a lesion carries its mask (one image per SOP instance, in TRUTH_INDEX's order) and
    the noise-free enhancement curve inside it, computed from the truth sidecar."""
    import json

    exported = 0
    for index_file in sorted((tree[0] / "QIN-BREAST").rglob(demo_dicom.TRUTH_INDEX)):
        record = json.loads(index_file.read_text())
        lesion = record.get("lesion")
        if lesion is None:
            assert not (index_file.parent / demo_dicom.LESION_FILE).exists()
            continue
        exported += 1
        truth, uids = truth_of(index_file.parent)
        mask = np.load(index_file.parent / lesion["mask_file"]).astype(bool)
        assert mask.shape == truth.shape and len(uids) == len(mask)
        times, slices = len(lesion["frame_times_s"]), SMALL["slices"]
        assert times == SMALL["time_points"] and lesion["n_pre"] == protocol.frame_times(times)[2]
        volume, voxels = truth.reshape(times, slices, *truth.shape[1:]), mask.reshape(times, slices, *mask.shape[1:])
        assert all(np.array_equal(voxels[0], v) for v in voxels)  # one ROI for every frame
        assert lesion["voxels"] == voxels[0].sum() > 0
        k = lesion["central_position"]
        assert voxels[0, k].sum() == voxels[0].sum(axis=(1, 2)).max()
        curve = volume[:, k][:, voxels[0, k]].mean(axis=1)
        np.testing.assert_allclose(lesion["central_curve"], curve, rtol=1e-5)
        base = curve[:lesion["n_pre"]].mean()
        np.testing.assert_allclose(lesion["central_relative_enhancement"], (curve - base) / base, atol=1e-5)
        assert max(lesion["relative_enhancement"]) > 0.2  # the lesion enhances
    assert exported >= 1
