"""enhance.py: DICOM round trips (every bundled transfer syntax, multi-frame, odd and non-square matrices), tiled
equals untiled, a real PSNR gain through DICOM with the smoke-trained model, no overwrite and no partial output,
CLI errors.

Most round trips use the untrained default U-Net: its correction layer is zero-initialized, so it is exactly the
identity, and the written stored values must equal the input's exactly. That checks normalization, padding and
cropping, rescale, rounding, clipping and frame order in one comparison (any shift or scale error shows).
"""

import json
import os
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
    enhanced_mr_jpegls_file,
    image_dataset,
    padded_mr_file,
    phantom,
    uid,
    write_mr_series,
)
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

import enhance
from breastmri.config import load_config, save_config
from breastmri.data import preprocess
from breastmri.dicom import index, kinds, pixels, scan, writer
from breastmri.enhance import pipeline
from breastmri.enhance.enhancer import Enhancer, predict_stack
from breastmri.restore import predict
from breastmri.simulate.degrade import degrade, series_rng

ROOT = Path(__file__).resolve().parents[1]
GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
            "FrameOfReferenceUID")
BIT_TAGS = ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation")


# --------------------------------------------------------------------------------------------------------------
# helpers

def run(model, input_path, out, **kwargs):
    return pipeline.run(model, input_path, out, progress=False, **kwargs)


def source_references(ds):
    """(derivation items, source image references) of an output: the top-level ones of a classic image, those in
    each frame's DerivationImageSequence of an enhanced MR object (PS3.3 C.7.6.16.2.6)."""
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return [ds], list(ds.SourceImageSequence)
    derivations = [d for group in ds.PerFrameFunctionalGroupsSequence for d in group.DerivationImageSequence]
    return derivations, [r for d in derivations for r in d.SourceImageSequence]


def outputs(out):
    """{source SOPInstanceUID: output dataset} for every .dcm under out."""
    found = {}
    for path in sorted(Path(out).rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        for item in source_references(ds)[1]:
            found.setdefault(item.ReferencedSOPInstanceUID, ds)
    return found


def modality(ds):
    """Modality values of a single-frame dataset (float64)."""
    return ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def check_derived(src, out, n_frames=None):
    """The DICOM contract of one output object against its source."""
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not out["PixelData"].is_undefined_length  # no encapsulation left
    assert (out.Rows, out.Columns) == (src.Rows, src.Columns)
    for keyword in GEOMETRY:
        if keyword in src:
            assert out[keyword].value == src[keyword].value, keyword
    for keyword in BIT_TAGS + ("StudyInstanceUID", "PatientID", "SOPClassUID"):
        assert out.get(keyword) == src.get(keyword), keyword
    for keyword in ("SeriesInstanceUID", "SOPInstanceUID"):
        assert UID(out[keyword].value).is_valid and out[keyword].value.startswith("2.25.")
        assert out[keyword].value != src[keyword].value
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    enhanced = "PerFrameFunctionalGroupsSequence" in src
    # Enhanced MR allows only PRIMARY as value 2 (PS3.3 C.8.16.1); classic MR says SECONDARY for derived pixels.
    assert list(out.ImageType[:2]) == ["DERIVED", "PRIMARY" if enhanced else "SECONDARY"]
    original_type = src.get("ImageType")
    if original_type is not None and len(list(original_type)) > 2:
        assert list(out.ImageType[2:]) == list(original_type[2:])
    assert out.SeriesDescription == str(src.get("SeriesDescription", "")) + " enhanced"
    assert int(out.SeriesNumber) == int(src.get("SeriesNumber") or 0) + 1000
    derivations, refs = source_references(out)
    for item in derivations:
        assert "model.keras" in item.DerivationDescription and "config hash" in item.DerivationDescription
        assert item.DerivationCodeSequence[0].CodeValue == writer.DERIVATION_SMOOTHING[0]  # CID 7203
    assert {r.ReferencedSOPInstanceUID for r in refs} == {src.SOPInstanceUID}
    assert all(r.ReferencedSOPClassUID == src.SOPClassUID for r in refs)
    assert all(r.PurposeOfReferenceCodeSequence[0].CodeValue == "121322" for r in refs)  # CID 7202
    assert out.ContentDate == out.InstanceCreationDate and out.ContentTime == out.InstanceCreationTime
    assert out.ContributingEquipmentSequence[-1].Manufacturer == writer.SOFTWARE_NAME
    if n_frames:
        assert [int(r.ReferencedFrameNumber) for r in refs] == list(range(1, n_frames + 1))
    pixels = out.pixel_array
    low, high = writer.stored_range(int(out.BitsStored), int(out.PixelRepresentation) == 1)
    assert pixels.min() >= low and pixels.max() <= high


# --------------------------------------------------------------------------------------------------------------
# round trips with the identity model

@pytest.mark.parametrize("syntax", sorted(BUNDLED_MR))
def test_bundled_transfer_syntaxes_round_trip(syntax, identity, tmp_path):
    src_path = bundled(BUNDLED_MR[syntax])
    summary = run(identity, src_path, tmp_path / "out")  # a single file as --input
    assert summary["series_done"] == 1 and summary["slices"] == 1 and summary["series_skipped"] == {}
    src = pydicom.dcmread(src_path)
    (out,) = outputs(tmp_path / "out").values()
    check_derived(src, out)
    assert out.pixel_array.dtype == src.pixel_array.dtype.newbyteorder("=")  # int16: MR_small is signed
    np.testing.assert_array_equal(out.pixel_array, src.pixel_array)  # identity model: the values come back exactly
    assert "LargestImagePixelValue" not in out  # stale statistics of the input are dropped
    assert out.WindowCenter == src.WindowCenter  # same units, same window


def test_multiframe_enhanced_mr_round_trip(identity, tmp_path):
    frames = np.stack([phantom(40, 36, seed=k) for k in range(3)]).clip(0, 4000).astype(np.uint16)
    src_ds = enhanced_mr_dataset(frames, positions=[0.0, 2.5, 5.0], temporal=[1, 1, 1], slopes=[1.0, 2.0, 0.5],
                                 intercepts=[0.0, -100.0, 10.0], file_order=[2, 0, 1])
    src_ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    (tmp_path / "in").mkdir()
    src_ds.save_as(tmp_path / "in" / "enhanced.dcm", enforce_file_format=True)
    summary = run(identity, tmp_path / "in", tmp_path / "out")
    assert summary["series_done"] == 1 and summary["slices"] == 3
    files = list((tmp_path / "out").rglob("*.dcm"))
    assert len(files) == 1  # multi-frame in, one multi-frame object out
    src, out = pydicom.dcmread(tmp_path / "in" / "enhanced.dcm"), pydicom.dcmread(files[0])
    check_derived(src, out, n_frames=3)
    assert int(out.NumberOfFrames) == 3
    for group in out.PerFrameFunctionalGroupsSequence:  # each frame names its source frame; the rest is kept
        del group.DerivationImageSequence
    assert out.PerFrameFunctionalGroupsSequence == src.PerFrameFunctionalGroupsSequence  # geometry, rescale, time
    assert out.SharedFunctionalGroupsSequence == src.SharedFunctionalGroupsSequence
    assert "SourceImageSequence" not in out  # not part of the Enhanced MR IOD
    np.testing.assert_array_equal(out.pixel_array, src.pixel_array)  # stored frame order and per-frame rescale


@pytest.mark.parametrize("rows, cols", [(70, 45), (45, 70), (33, 64), (64, 64)])
def test_odd_and_non_square_matrices_keep_their_shape(rows, cols, identity, tmp_path):
    _, stored = write_mr_series(tmp_path / "in", "P1", n_slices=2, rows=rows, cols=cols, slope=1.5, intercept=-20)
    summary = run(identity, tmp_path / "in", tmp_path / "out")
    assert summary["series_done"] == 1
    done = summary["series"][0]
    assert done["size"]["method"] == "pad" and done["size"]["model_shape"] == [-(-rows // 4) * 4, -(-cols // 4) * 4]
    found = outputs(tmp_path / "out")
    assert len(found) == 2
    for src_path in sorted((tmp_path / "in").glob("*.dcm")):
        src = pydicom.dcmread(src_path)
        out = found[src.SOPInstanceUID]
        check_derived(src, out)
        assert out.pixel_array.shape == (rows, cols)
        np.testing.assert_array_equal(out.pixel_array, src.pixel_array)


def test_thesis_autoencoder_is_resized_and_mapped_back(tmp_path):
    from breastmri.restore.networks import get_model

    cfg = load_config(overrides=["model.name=thesis_autoencoder", "preprocess.image_size=256"])
    run_dir = tmp_path / "thesis"
    run_dir.mkdir()
    get_model(cfg).save(run_dir / "model.keras")
    save_config(cfg, run_dir / "config.yaml")
    write_mr_series(tmp_path / "in", "P1", n_slices=2, rows=70, cols=45)
    summary = run(run_dir, tmp_path / "in", tmp_path / "out", tile=64)  # --tile does not apply to it
    assert summary["series_done"] == 1
    assert "resize" in summary["size_handling"]["thesis_autoencoder"]
    assert summary["series"][0]["size"] == {"method": "resize", "tiled": False, "tile": None, "margin": 0,
                                            "model_shape": [256, 256]}
    for out in outputs(tmp_path / "out").values():
        assert out.pixel_array.shape == (70, 45)


def test_demo_tree_round_trip_with_preview(smoke_dicom, smoke_run, tmp_path):
    patient = sorted((smoke_dicom / "QIN-BREAST").iterdir())[0]  # one patient: MR visits + PET/CT + SR decoys
    series_list, skipped, _ = index.index_tree(patient)
    summary = run(smoke_run, patient, tmp_path / "out", preview=True)
    assert summary["series_done"] == len(series_list) >= 2
    assert summary["series_skipped"] == {}
    assert summary["files_skipped"] == dict(sorted(skipped.items()))
    assert {"modality CT", "modality PT"} <= set(summary["files_skipped"])
    assert summary["slices"] == sum(len(s.frames) for s in series_list)
    assert summary["ms_per_slice"] > 0 and summary["seconds"] > 0
    assert summary["config_hash"] and summary["model"].endswith("model.keras")
    saved = json.loads((tmp_path / "out" / "enhance_summary.json").read_text())
    assert saved["series_done"] == summary["series_done"]

    found = outputs(tmp_path / "out")
    assert len(found) == summary["slices"]
    for s in series_list:
        done = next(r for r in summary["series"] if r["source_series_uid"] == s.series_uid)
        folder = tmp_path / "out" / done["folder"]
        assert folder.parent.name == s.study_uid and folder.name == done["output_series_uid"]
        assert len(list(folder.glob("*.dcm"))) == len(s.frames)
        assert json.loads((folder / pipeline.MARKER).read_text())["source_series_uid"] == s.series_uid
        assert (tmp_path / "out" / done["preview"]).stat().st_size > 10_000
        new_uids = set()
        for (path, _), sop in zip(s.frames, s.sop_instance_uids):
            src, out = pydicom.dcmread(path), found[sop]
            check_derived(src, out)
            new_uids.add(out.SeriesInstanceUID)
            assert out.pixel_array.dtype == np.uint16 and out.pixel_array.max() <= 4095  # BitsStored 12
        assert new_uids == {done["output_series_uid"]}
    assert not list((tmp_path / "out").glob(pipeline.TMP_PREFIX + "*"))


# --------------------------------------------------------------------------------------------------------------
# tiling

def random_unet(depth, seed=0):
    """A U-Net whose every weight is random (the zero-initialized correction too, so it is not the identity)."""
    from breastmri.restore.networks import unet

    model = unet(depth=depth, filters=4, seed=seed)
    layer = model.get_layer("correction")
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in layer.get_weights()])
    cfg = load_config(overrides=[f"model.depth={depth}", "model.context.time=0", "model.context.precontrast_frames=0",
                                 "model.context.projection=false"])
    return Enhancer(model=model, cfg=cfg, model_path=Path("random.keras"), config_hash="test",
                            model_sha="test", name="unet", multiple=2**depth,
                            margin=predict.receptive_margin(depth))


@pytest.mark.parametrize("depth, tile, shape", [(2, 64, (160, 144)), (3, 128, (160, 144)), (2, 64, (150, 141))])
def test_tiled_equals_untiled(depth, tile, shape):
    enhancer = random_unet(depth)
    stack = np.stack([phantom(*shape, seed=k) / 1000.0 for k in range(2)]).astype(np.float32)
    whole, info_whole = predict_stack(enhancer, stack)
    tiled, info_tiled = predict_stack(enhancer, stack, tile=tile, force_tiling=True, batch_size=16)
    assert not info_whole["tiled"] and info_tiled["tiled"] and info_tiled["tile"] == tile
    assert whole.shape == tiled.shape == stack.shape
    assert np.abs(whole - stack).max() > 0.05  # the network does change the image
    assert np.abs(tiled - whole).max() < 1e-3


def test_tiling_with_a_short_margin_differs():
    """The margin is what makes tiling exact: with one pooling cell of context the seams show."""
    enhancer = random_unet(2)
    stack = (phantom(160, 144, seed=1) / 1000.0).astype(np.float32)[None]
    whole, _ = predict_stack(enhancer, stack)
    enhancer.margin = enhancer.multiple
    tiled, _ = predict_stack(enhancer, stack, tile=64, force_tiling=True)
    assert np.abs(tiled - whole).max() > 1e-3


@pytest.mark.parametrize("depth", [2, 3])
def test_receptive_margin_covers_the_influence_of_one_pixel(depth):
    enhancer = random_unet(depth, seed=2)
    size = 4 * enhancer.margin + 2**depth * 4
    base = np.random.default_rng(0).uniform(0.2, 0.8, (1, size, size)).astype(np.float32)
    poked = base.copy()
    centre = size // 2
    poked[0, centre, centre] += 1.0
    diff = np.abs(predict_stack(enhancer, poked)[0] - predict_stack(enhancer, base)[0])[0]
    rows, cols = np.nonzero(diff > 1e-6)
    reach = max(np.abs(rows - centre).max(), np.abs(cols - centre).max())
    assert 2**depth <= reach <= enhancer.margin


def test_tile_option_is_checked(identity):
    with pytest.raises(predict.EnhanceError, match="multiple of 4"):
        predict.check_tile(66, identity.multiple, identity.margin)
    with pytest.raises(predict.EnhanceError, match="at least 52"):
        predict.check_tile(48, identity.multiple, identity.margin)


# --------------------------------------------------------------------------------------------------------------
# the smoke-trained model improves a degraded series, in scanner units, through DICOM

def test_enhancing_a_degraded_series_raises_psnr(smoke_dicom, smoke_run, smoke_cfg, tmp_path):
    series = index.index_tree(smoke_dicom)[0][0]
    clean = pixels.read_series(series).astype(np.float64)  # modality units
    lo, hi = preprocess.robust_range(clean, smoke_cfg["preprocess"]["norm_percentiles"])
    normalized = ((clean - lo) / (hi - lo)).astype(np.float32)
    noisy, _ = degrade(normalized, smoke_cfg["degrade"], series_rng(smoke_cfg["seed"], series.series_uid),
                       zero=-lo / (hi - lo))
    noisy_modality = noisy.astype(np.float64) * (hi - lo) + lo

    # The degraded series as DICOM: same tags, the degraded pixels, new series and instance UIDs.
    degraded_dir = tmp_path / "degraded"
    degraded_dir.mkdir()
    new_series = generate_uid()
    degraded = {}
    for k, (path, _) in enumerate(series.frames):
        ds = pydicom.dcmread(path)
        stored, _ = writer.to_stored(noisy_modality[k:k + 1], [series.slopes[k]], [series.intercepts[k]],
                                      int(ds.BitsStored), int(ds.BitsAllocated), False)
        stored = stored[0]
        ds.PixelData = stored.tobytes()
        ds.SeriesInstanceUID = new_series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(degraded_dir / f"{k:03d}.dcm", enforce_file_format=True)
        degraded[ds.SOPInstanceUID] = (k, modality(ds))  # what the scanner would store, quantized

    summary = run(smoke_run, degraded_dir, tmp_path / "out")
    assert summary["series_done"] == 1
    enhanced = np.empty_like(clean)
    for sop, out in outputs(tmp_path / "out").items():
        enhanced[degraded[sop][0]] = modality(out)
    noisy_read = np.stack([degraded[sop][1] for sop in sorted(degraded, key=lambda s: degraded[s][0])])

    data_range = clean.max() - clean.min()

    def psnr(x):
        return 10 * np.log10(data_range**2 / np.mean((x - clean) ** 2))

    psnr_noisy, psnr_enhanced = psnr(noisy_read), psnr(enhanced)
    print(f"PSNR vs clean (modality units, data range {data_range:.0f}): degraded {psnr_noisy:.2f} dB, "
          f"enhanced {psnr_enhanced:.2f} dB")
    assert psnr_enhanced > psnr_noisy


# --------------------------------------------------------------------------------------------------------------
# existing output, failures, CLI

def mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(Path(folder).rglob("*")) if p.is_file() and p.suffix == ".dcm"}


def test_existing_output_is_kept_unless_overwrite(identity, tmp_path):
    write_mr_series(tmp_path / "in", "P1", n_slices=3, rows=24, cols=24)
    out = tmp_path / "out"
    first = run(identity, tmp_path / "in", out)
    assert first["series_done"] == 1
    before = mtimes(out)
    assert len(before) == 3

    second = run(identity, tmp_path / "in", out)
    assert second["series_done"] == 0 and second["series_skipped"] == {"exists": 1}
    assert second["series"][0]["output_series_uid"] == first["series"][0]["output_series_uid"]  # deterministic
    assert mtimes(out) == before

    third = run(identity, tmp_path / "in", out, overwrite=True)
    assert third["series_done"] == 1 and third["series_skipped"] == {}
    after = mtimes(out)
    assert list(after) == list(before) and all(after[p] != before[p] for p in before)
    assert not list(out.glob(pipeline.TMP_PREFIX + "*"))

    # an --overwrite killed between its two renames: the old series aside, the new one half written; the next run
    # puts the old one back (and resumes: nothing to do), removes the half one, and leaves no temporary name
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # a process id that no longer runs
    folder = next(out.rglob("*.dcm")).parent
    folder.rename(folder.with_name(f"{pipeline.TMP_PREFIX}{ended.pid}{pipeline.SWAPPED}{folder.name}"))
    (out / f"{pipeline.TMP_PREFIX}{ended.pid}-{third['series'][0]['output_series_uid']}").mkdir()
    fourth = run(identity, tmp_path / "in", out)
    assert fourth["series_done"] == 0 and fourth["series_skipped"] == {"exists": 1}
    assert mtimes(out) == after and not list(out.rglob(pipeline.TMP_PREFIX + "*"))


def test_output_inside_the_input_tree_is_not_enhanced_again(identity, tmp_path):
    write_mr_series(tmp_path / "tree" / "mr", "P1", n_slices=2, rows=24, cols=24)
    out = tmp_path / "tree" / "enhanced"
    assert run(identity, tmp_path / "tree", out)["series_done"] == 1
    # other DICOM someone put into the output folder is not enhanced either
    write_mr_series(out / "foreign", "P2", n_slices=1, rows=24, cols=24, seed=3)
    again = run(identity, tmp_path / "tree", out)
    assert again["series_done"] == 0
    assert again["series_skipped"] == {"exists": 1, "inside output folder": 1}
    assert again["files_skipped"][kinds.ENHANCE_OUTPUT_REASON] == 2  # our own files, by their marker


def test_own_output_is_recognized_and_never_enhanced_again(identity, tmp_path):
    """An output tree moved elsewhere (or into another input tree) is skipped file by file, by the private block,
    and still when an anonymizer dropped that block (by ContributingEquipmentSequence / DerivationDescription)."""
    write_mr_series(tmp_path / "in", "P1", n_slices=2, rows=24, cols=24)
    assert run(identity, tmp_path / "in", tmp_path / "out")["series_done"] == 1
    files = sorted((tmp_path / "out").rglob("*.dcm"))
    ds = pydicom.dcmread(files[0])
    block = ds.private_block(kinds.ENHANCE_PRIVATE_GROUP, kinds.ENHANCE_PRIVATE_CREATOR)
    assert block[0x01].value == "enhance.py output"
    assert identity.model_sha in block[0x02].value
    assert kinds.written_by_enhance(ds)
    for keyword in ("ContributingEquipmentSequence", "DerivationDescription"):  # each marker alone is enough
        stripped = pydicom.dcmread(files[0])
        stripped.remove_private_tags()
        delattr(stripped, keyword)
        assert kinds.written_by_enhance(stripped), keyword

    with pytest.raises(predict.EnhanceError, match=f"no MR series.*{kinds.ENHANCE_OUTPUT_REASON}: 2"):  # nothing else there
        run(identity, tmp_path / "out", tmp_path / "out2")
    series, skipped, _ = index.index_tree(tmp_path / "out")  # preprocessing skips them the same way
    assert series == [] and skipped[kinds.ENHANCE_OUTPUT_REASON] == 2


def test_enhanced_mr_output_is_recognized(identity, tmp_path):
    (tmp_path / "in").mkdir()
    enhanced_mr_jpegls_file(tmp_path / "in" / "emr.dcm")
    assert run(identity, tmp_path / "in", tmp_path / "out")["series_done"] == 1
    (path,) = (tmp_path / "out").rglob("*.dcm")
    stripped = pydicom.dcmread(path)
    stripped.remove_private_tags()
    del stripped.ContributingEquipmentSequence
    assert kinds.written_by_enhance(stripped)  # by the per-frame DerivationDescription
    assert scan.scan_file(path) == kinds.ENHANCE_OUTPUT_REASON


def test_enhance_applies_the_runs_series_filter_and_image_kinds(identity_run, tmp_path):
    cfg = load_config(identity_run / "config.yaml", overrides=["preprocess.series_filter=(?i)dce"])
    run_dir = tmp_path / "filtered_run"
    run_dir.mkdir()
    (run_dir / "model.keras").write_bytes((identity_run / "model.keras").read_bytes())
    save_config(cfg, run_dir / "config.yaml")
    write_mr_series(tmp_path / "in" / "dce", "P1", n_slices=2, rows=24, cols=24, description="ax DCE")
    write_mr_series(tmp_path / "in" / "t2", "P1", n_slices=3, rows=24, cols=24, description="T2 tse", seed=1)
    write_mr_series(tmp_path / "in" / "phase", "P1", n_slices=2, rows=24, cols=24, description="DCE phase", seed=2)
    for path in (tmp_path / "in" / "phase").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "P", "ND"]
        ds.save_as(path, enforce_file_format=True)
    summary = run(run_dir, tmp_path / "in", tmp_path / "out")
    assert summary["series_done"] == 1 and summary["series"][0]["series_description"] == "ax DCE"
    assert summary["series_skipped"] == {"series filter": 1}
    assert summary["files_skipped"] == {"series filter": 3, kinds.KIND_REASONS["phase"]: 2}
    assert summary["series_filter"] == "(?i)dce" and summary["include_kinds"] == []


def corrupt_compressed_series(folder):
    """A JPEG-LS series whose compressed stream is garbage: the header is fine, decoding fails."""
    folder.mkdir(parents=True)
    ds = image_dataset(np.full((16, 16), 100, np.uint16), patient_id="BAD", series_uid="1.2.3.4.5")
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8 not a JPEG-LS stream at all " * 4])
    ds["PixelData"].VR = "OB"
    ds.save_as(folder / "bad.dcm", enforce_file_format=True)


def test_failing_series_is_counted_and_leaves_nothing(identity, tmp_path):
    write_mr_series(tmp_path / "in" / "good", "P1", n_slices=2, rows=24, cols=24)
    corrupt_compressed_series(tmp_path / "in" / "bad")
    out = tmp_path / "out"
    summary = run(identity, tmp_path / "in", out)
    assert summary["series_done"] == 1
    assert summary["series_skipped"] == {"pixel read failed": 1}
    bad = next(r for r in summary["series"] if r["status"] == "skipped")
    assert bad["source_series_uid"] == "1.2.3.4.5" and bad["detail"]
    assert not (out / "BAD").exists()
    assert not list(out.glob(pipeline.TMP_PREFIX + "*"))


def test_failure_while_writing_leaves_no_partial_series(identity, tmp_path, monkeypatch):
    write_mr_series(tmp_path / "in", "P1", n_slices=3, rows=24, cols=24)
    real_save, calls = Dataset.save_as, []

    def failing_save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (injected)")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Dataset, "save_as", failing_save)
    out = tmp_path / "out"
    summary = run(identity, tmp_path / "in", out)
    assert summary["series_done"] == 0 and summary["series_skipped"] == {"write failed": 1}
    assert "disk full" in summary["series"][0]["detail"]
    assert [p.name for p in out.iterdir()] == ["enhance_summary.json"]  # one file was written, then removed


@pytest.mark.parametrize("where, failure, reason", [
    ("save_as", ValueError("could not convert string to float: '1,6'"), "write failed"),  # a source DS no VR holds
    ("save_as", TypeError("a bug in the header"), pipeline.UNFORESEEN_REASON),
    ("to_stored", ValueError("operands could not be broadcast"), pipeline.UNFORESEEN_REASON)])  # a pixel bug
def test_a_bug_while_writing_is_not_passed_off_as_a_write_failure(identity, identity_run, tmp_path, monkeypatch,
                                                                  where, failure, reason):
    """A header value that cannot be written skips its series as "write failed" (exit 0, a data problem); any other
    exception while writing, a ValueError of the pixel conversion included, is unforeseen: counted as such, and the
    command line exits 1."""
    from breastmri.dicom import writer

    write_mr_series(tmp_path / "in", "P1", n_slices=2, rows=24, cols=24)

    def failing(*args, **kwargs):
        raise failure

    monkeypatch.setattr(Dataset if where == "save_as" else writer, where, failing)
    summary = run(identity, tmp_path / "in", tmp_path / "out")
    assert summary["series_done"] == 0 and summary["series_skipped"] == {reason: 1}
    assert not list((tmp_path / "out").glob(pipeline.TMP_PREFIX + "*"))
    args = ["--model", str(identity_run), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "cli")]
    if reason == "write failed":
        enhance.main(args)
    else:
        with pytest.raises(SystemExit) as exit_:
            enhance.main(args)
        assert exit_.value.code == 1


@pytest.mark.parametrize("missing", ["model", "input"])
def test_cli_missing_model_or_input_exits_2(missing, identity_run, tmp_path):
    write_mr_series(tmp_path / "in", "P1", n_slices=1, rows=16, cols=16)
    args = {"model": str(identity_run), "input": str(tmp_path / "in")}
    args[missing] = str(tmp_path / "does-not-exist")
    result = subprocess.run([sys.executable, str(ROOT / "enhance.py"), "--model", args["model"], "--input",
                             args["input"], "--output", str(tmp_path / "out")], capture_output=True, text=True,
                            cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and f"--{missing}" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_enhances_a_series(identity_run, tmp_path):
    """The command line end to end, in this process (no second TensorFlow start-up)."""
    write_mr_series(tmp_path / "in", "P1", n_slices=2, rows=20, cols=28)
    summary = enhance.main(["--model", str(identity_run / "model.keras"), "--input", str(tmp_path / "in"),
                            "--output", str(tmp_path / "out"), "--batch-size", "1", "--tile", "64",
                            "--force-tiling", "--preview"])
    assert summary["series_done"] == 1 and summary["tiling"]["series_tiled"] == 1
    assert summary["series"][0]["size"]["tile"] == 64
    assert len(list((tmp_path / "out").rglob("*.png"))) == 1


# --------------------------------------------------------------------------------------------------------------
# what a derived object must say (PS3.3); tests/test_dciodvfy.py checks the same outputs with dciodvfy

def test_enhanced_mr_output_follows_the_enhanced_mr_rules(identity, tmp_path):
    (tmp_path / "in").mkdir()
    src_path = enhanced_mr_jpegls_file(tmp_path / "in" / "emr.dcm")
    src = pydicom.dcmread(src_path)
    # What some sources lack and the output must have anyway: Enhanced General Equipment values (C.7.5.2) and the
    # list of dimension organizations (C.7.6.17).
    src.DeviceSerialNumber = ""
    del src.DimensionOrganizationSequence
    src.save_as(src_path, enforce_file_format=True)
    assert run(identity, src_path, tmp_path / "out")["series_done"] == 1
    (out,) = outputs(tmp_path / "out").values()
    check_derived(src, out, n_frames=int(src.NumberOfFrames))
    assert out.SOPClassUID == src.SOPClassUID and out.file_meta.MediaStorageSOPClassUID == src.SOPClassUID
    frame_types = [i.FrameType for g in out.SharedFunctionalGroupsSequence for i in g.MRImageFrameTypeSequence]
    assert frame_types and all(list(t[:2]) == ["DERIVED", "PRIMARY"] for t in frame_types)
    assert not [k for k in writer.PULSE_SEQUENCE_TAGS if k in out]  # only for ORIGINAL/MIXED (C.8.13.4)
    assert all(str(out.get(k) or "").strip() for k in writer.ENHANCED_EQUIPMENT_TAGS)
    assert out.DeviceSerialNumber == "UNKNOWN" and out.Manufacturer == src.Manufacturer
    assert [i.DimensionOrganizationUID for i in out.DimensionOrganizationSequence] == \
        [src.DimensionIndexSequence[0].DimensionOrganizationUID]
    evidence = out.SourceImageEvidenceSequence[0]
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    np.testing.assert_array_equal(out.pixel_array, src.pixel_array)  # JPEG-LS in, uncompressed out, same values


def test_series_number_does_not_collide_with_the_study(identity, tmp_path):
    """The study already holds series 1 and 1001 (e.g. an earlier enhanced series): series 1 becomes 1002."""
    write_mr_series(tmp_path / "in" / "a", "P1", n_slices=1, rows=16, cols=16, description="DCE")
    write_mr_series(tmp_path / "in" / "b", "P1", n_slices=1, rows=16, cols=16, description="other", seed=1)
    for path in (tmp_path / "in" / "b").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.SeriesNumber = 1001
        ds.save_as(path, enforce_file_format=True)
    summary = run(identity, tmp_path / "in", tmp_path / "out")
    assert summary["series_done"] == 2
    numbers = {ds.SeriesDescription: int(ds.SeriesNumber) for ds in outputs(tmp_path / "out").values()}
    assert numbers == {"DCE enhanced": 1002, "other enhanced": 2001}


def test_unforeseen_failures_are_counted_per_series(identity, identity_run, tmp_path, monkeypatch):
    """A series that is all padding, and a failure nobody foresaw (here a header read raising KeyError): each
    skips its own series with a reason; the run goes on and the good series is written."""
    write_mr_series(tmp_path / "in" / "good", "P1", n_slices=2, rows=24, cols=24)
    blank = pydicom.dcmread(padded_mr_file(tmp_path / "blank.dcm", padding=-2000, border=32))
    (tmp_path / "in" / "blank").mkdir()
    blank.save_as(tmp_path / "in" / "blank" / "blank.dcm", enforce_file_format=True)
    summary = run(identity, tmp_path / "in", tmp_path / "out")
    assert summary["series_done"] == 1 and summary["series_skipped"] == {"constant image": 1}
    assert "every pixel is padding" in next(r["detail"] for r in summary["series"] if r["status"] == "skipped")

    def broken(series, raw):
        raise KeyError("a tag nobody expected")

    monkeypatch.setattr(pipeline, "padding_mask", broken)
    summary = run(identity, tmp_path / "in" / "good", tmp_path / "out2")
    assert summary["series_done"] == 0 and summary["series_skipped"] == {pipeline.UNFORESEEN_REASON: 1}
    assert "KeyError" in summary["series"][0]["detail"] and ".py:" in summary["series"][0]["detail"]
    with pytest.raises(SystemExit) as exit_:  # the command line does not pass a bug off as a clean run
        enhance.main(["--model", str(identity_run), "--input", str(tmp_path / "in" / "good"),
                      "--output", str(tmp_path / "out3")])
    assert exit_.value.code == 1
    assert not list((tmp_path / "out2").glob(pipeline.TMP_PREFIX + "*"))


def test_inputs_without_uids_or_with_lossy_history(identity, tmp_path):
    """Inputs without SOPInstanceUID and StudyInstanceUID (in the dataset or the file meta) still give one UID per
    output file and a study; a JPEG baseline (lossy) input is marked LossyImageCompression 01 (PS3.3 C.7.6.1.1.5)."""
    from io import BytesIO

    from PIL import Image
    from pydicom.uid import JPEGBaseline8Bit

    (tmp_path / "anon").mkdir()
    for i in range(3):
        ds = image_dataset(np.round(phantom(24, 24, seed=i)).astype(np.uint16), patient_id="A1",
                           series_uid=uid("anon"), instance=i + 1, position=i)
        del ds.SOPInstanceUID, ds.StudyInstanceUID, ds.file_meta.MediaStorageSOPInstanceUID
        ds.save_as(tmp_path / "anon" / f"{i}.dcm", enforce_file_format=False)
    summary = run(identity, tmp_path / "anon", tmp_path / "out")
    written = [pydicom.dcmread(p) for p in sorted((tmp_path / "out").rglob("*.dcm"))]
    assert summary["series_done"] == 1 and len({ds.SOPInstanceUID for ds in written}) == 3
    assert len({ds.StudyInstanceUID for ds in written}) == 1 and written[0].StudyInstanceUID

    pixels = np.clip(phantom(24, 24, signal=200.0) / 2, 0, 255).astype(np.uint8)
    stream = BytesIO()
    Image.fromarray(pixels).save(stream, format="JPEG", quality=90)
    ds = image_dataset(pixels.astype(np.uint16), patient_id="J1", series_uid=uid("jpeg"))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([stream.getvalue()])
    ds["PixelData"].VR = "OB"
    (tmp_path / "jpeg").mkdir()
    ds.save_as(tmp_path / "jpeg" / "j.dcm", enforce_file_format=True)
    summary = run(identity, tmp_path / "jpeg", tmp_path / "out_jpeg")
    (out,) = outputs(tmp_path / "out_jpeg").values()
    assert summary["series_done"] == 1 and out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "ISO_10918_1"


def test_padding_stays_padding_and_tissue_never_becomes_padding(tmp_path):
    """A network that changes every pixel (random weights): padded pixels still hold PixelPaddingValue, no tissue
    pixel takes a value in the padding range, and the padding does not enter the normalization."""
    src_path = padded_mr_file(tmp_path / "padded.dcm", padding=-2000, border=6)
    src = pydicom.dcmread(src_path)
    enhancer = random_unet(2)
    summary = run(enhancer, src_path, tmp_path / "out")
    assert summary["series_done"] == 1
    (out,) = outputs(tmp_path / "out").values()
    padded = src.pixel_array == -2000
    assert padded.sum() > 0 and int(out.PixelPaddingValue) == -2000
    assert np.all(out.pixel_array[padded] == -2000)
    assert np.all(out.pixel_array[~padded] != -2000)
    assert np.abs(out.pixel_array[~padded].astype(float) - src.pixel_array[~padded]).max() > 0  # it did change
    tissue = src.pixel_array[~padded]
    assert summary["series"][0]["norm_lo"] == pytest.approx(float(np.percentile(tissue.astype(np.float32), 0.5)))
    assert out.WindowCenter == src.WindowCenter and out.WindowWidth == src.WindowWidth  # same units, same window


def test_keep_padding_with_a_range_limit():
    """PixelPaddingValue 0 with PixelPaddingRangeLimit 10 (PS3.3 C.7.6.3.1.11): 0..10 is padding."""
    stored = np.array([[[0, 5, 10, 11, 200]]], dtype=np.uint16)
    mask = np.array([[[True, False, False, False, False]]])
    out = writer.keep_padding(stored, mask, (0, 10, 0), 12, False)
    assert out.tolist() == [[[0, 11, 11, 11, 200]]] and out.dtype == np.uint16
    signed = writer.keep_padding(np.array([[-2048, -2047, 5]], np.int16), None, (-2048, -2047, -2048), 12, True)
    assert signed.tolist() == [[-2046, -2046, 5]]
