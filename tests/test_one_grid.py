"""The model sees at inference what it saw in training: a degraded demo series written as DICOM and enhanced by
enhance.py gives, on the same pixels and in normalized units, what main.py's evaluation gives for those slices.

The default native grid (preprocess.image_size null; the change common to a slice position's frames taken back,
model.common_anatomy, and without it), a resized run (the thesis' path) and a multi-frame context
model (neighbouring time points and slices, a pre-contrast guide and the temporal projection, gathered by
enhance.py from the DICOM series) are checked, and self-supervised (noise2void) runs without and with the
projection, whose output both paths correct for the Rician bias with the sigma they measure on the series. The
first release failed this twice over: preprocessing normalized with the clean series' percentiles while
enhance.py used its input's own, and the U-Net trained on resized slices was applied at the native matrix.
"""

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

import main
from breastmri.config import load_config
from breastmri.data.manifest import read_manifest
from breastmri.data.paired import PairedSlices
from breastmri.enhance import pipeline
from breastmri.evaluate import evaluation
from breastmri.restore import losses, training
from breastmri.restore.networks import context_offsets, keeps_common, size_multiple

ROOT = Path(__file__).resolve().parents[1]
# The degraded series goes through DICOM as 16-bit integers: quantization costs at most ~2e-5 in normalized units,
# the network passes that on; the first release's normalization alone was off by 2.5e-3 with this model.
TOLERANCE = 2e-4


def degraded_dicom(native_dir, series_uid, source_tree, out):
    """Write the degraded slices of one series, as preprocessing made them at the acquisition matrix (native_dir:
    a preprocessing output with image_size null), as a DICOM series: the source files' headers with their pixels
    replaced by the degraded image in modality units (16-bit, a rescale with headroom on both sides)."""
    rows = [r for r in read_manifest(native_dir) if r["series_uid"] == series_uid]
    noisy = np.load(Path(native_dir) / rows[0]["noisy_file"])
    lo, hi = rows[0]["norm_lo"], rows[0]["norm_hi"]
    values = {r["sop_instance_uid"]: noisy[r["slice_index"]] * (hi - lo) + lo for r in rows}
    low, span = min(v.min() for v in values.values()), max(np.ptp(v) for v in values.values())
    intercept, slope = low - 0.5 * span, 2.0 * span / 65535
    out.mkdir(parents=True)
    for path in Path(source_tree).rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        if ds.get("SeriesInstanceUID") != series_uid:
            continue
        stored = np.clip(np.rint((values[ds.SOPInstanceUID] - intercept) / slope), 0, 65535).astype("<u2")
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        ds.PixelData = stored.tobytes()
        ds.save_as(out / path.name)
    return rows


def roughen(model_path, seed=0):
    """Give a trained model random, clearly non-identity weights (saved in place). A one-epoch smoke model is
    nearly the identity, which gives the same output in any normalization and on any grid, so it could not show
    a mismatch; a random nonlinear network with biases shows every difference in scale, offset or grid."""
    model = losses.load_model(model_path)
    rng = np.random.default_rng(seed)
    # 0.75 x He-scaled kernels (fan-in = all but the last axis): a correction of ~0.2, inside the stored range
    model.set_weights([rng.normal(0, 0.75 * np.sqrt(2 / max(w[..., 0].size, 1)) if w.ndim > 1 else 0.02, w.shape)
                       .astype(w.dtype) for w in model.get_weights()])
    model.save(model_path)


@pytest.mark.parametrize("image_size, context", [
    (None, []), (96, []),
    (None, ["model.context.time=1", "model.context.slices=1", "model.context.precontrast_frames=2",
            "model.context.projection=local"]),
    (None, ["train.mode=noise2void", "model.context.time=1", "model.context.precontrast_frames=0",
            "model.context.projection=false"]),
    (None, ["train.mode=noise2void", "model.context.precontrast_frames=0", "model.context.projection=local"]),
    (None, ["model.common_anatomy=network"])],
    ids=["native", "resized", "native-context", "native-noise2void", "native-noise2void-projection",
         "native-network-output"])
def test_enhance_equals_evaluation_on_the_same_slices(image_size, context, smoke_dicom, tmp_path):
    from breastmri.data import preprocess

    overrides = [f"preprocess.image_size={'null' if image_size is None else image_size}", *context]
    cfg = load_config(ROOT / "configs" / "smoke.yaml", overrides)
    data = tmp_path / "data"
    preprocess.run(smoke_dicom, data, cfg, progress=False)
    run_dir = tmp_path / "run"
    main.main(["--config", str(ROOT / "configs" / "smoke.yaml"), *sum((["--set", o] for o in overrides), []),
               "--data", str(data), "--run-dir", str(run_dir)])

    roughen(run_dir / "model.keras")
    native = data
    if image_size is not None:  # the same seed and series give the same degradation at the acquisition matrix
        native = tmp_path / "native"
        preprocess.run(smoke_dicom, native, load_config(ROOT / "configs" / "smoke.yaml"), progress=False)
    series_uid = read_manifest(data, "test")[0]["series_uid"]
    degraded_dicom(native, series_uid, smoke_dicom, tmp_path / "degraded")
    rows = [r for r in read_manifest(data) if r["series_uid"] == series_uid]
    assert (rows[0]["norm_lo"], rows[0]["norm_hi"]) == tuple(
        next((r["norm_lo"], r["norm_hi"]) for r in read_manifest(native) if r["series_uid"] == series_uid))
    out = tmp_path / "enhanced"
    summary = pipeline.run(run_dir, tmp_path / "degraded", out, progress=False)
    assert summary["series_done"] == 1, summary
    if image_size is not None:
        assert "resized, as in training" in str(summary), summary

    # main.py's evaluation path on the same slices
    model = losses.load_model(run_dir / "model.keras")
    ds = PairedSlices(data, "test", batch_size=len(rows), context=context_offsets(cfg))
    evaluated = {}
    rician = training.needs_rician_correction(cfg, rows[0]["degrade_model"])  # self-supervised output
    keeps = keeps_common(cfg)  # the change common to a position's frames taken back (the default with a projection)
    for b in range(len(ds)):
        for meta, (_, _, _, pred) in zip(ds.batch_rows(b), evaluation.predict_slices(model, ds, b, size_multiple(cfg),
                                                                               rician, keeps=keeps)):
            evaluated[meta["sop_instance_uid"]] = pred
    lo, hi = rows[0]["norm_lo"], rows[0]["norm_hi"]
    compared = 0
    for path in out.rglob("*.dcm"):
        ds_out = pydicom.dcmread(path)
        source = ds_out.SourceImageSequence[0].ReferencedSOPInstanceUID
        enhanced = ds_out.pixel_array * float(ds_out.RescaleSlope) + float(ds_out.RescaleIntercept)
        normalized = (enhanced - lo) / (hi - lo)
        assert normalized.shape == evaluated[source].shape
        if rician or keeps is not None:
            # the 16-bit DICOM copy of the series (vs float arrays) moves a few pixels a little: the common change
            # reads the signal level in bins whose members it can move (one of 4096 by 3.5e-4, measured), and the
            # Rician inverse is steep just above the noise floor (dA/dE -> inf at sigma sqrt(pi/2)), where it moves
            # the sigma each path measures and the projection's input (one air pixel of 4096 by 1.08e-3, measured)
            error = np.abs(normalized - evaluated[source])
            assert np.mean(error > 1e-3) < 1e-3 and error.max() < 5e-3, (np.mean(error > 1e-3), error.max())
        else:
            np.testing.assert_allclose(normalized, evaluated[source], atol=TOLERANCE)
        compared += 1
    assert compared == len(rows)


def test_fresh_noise_is_new_each_epoch_and_reproducible(smoke_data):
    def batch(epoch, index=0, seed=0):
        ds = PairedSlices(smoke_data, "train", batch_size=4, shuffle=True, patch_size=32, fresh_noise=True,
                          seed=seed)
        ds.epoch = epoch
        return ds[index]

    (noisy0, clean0), (noisy1, _) = batch(0), batch(1)
    again, _ = batch(0)
    np.testing.assert_array_equal(noisy0, again)  # same (seed, epoch, index): the same draw
    assert not np.array_equal(noisy0, noisy1)  # another epoch: other crops and other noise
    # the same crops with another seed's noise differ only by noise of the recorded level
    stored = PairedSlices(smoke_data, "train", batch_size=4, shuffle=True, patch_size=32, seed=0)
    stored.epoch = 0
    noisy_stored, clean_stored = stored[0]
    np.testing.assert_array_equal(clean_stored, clean0)  # same crops, same clean
    assert not np.array_equal(noisy_stored, noisy0)  # but not the stored noise
    rows = stored.batch_rows(0)
    sigma = np.mean([r["sigma_added"] for r in rows])
    tissue = clean0 - main_zero(rows[0]) > 10 * sigma  # Rician ~ Gaussian there
    assert np.std((noisy0 - clean0)[tissue]) == pytest.approx(sigma, rel=0.25)


def main_zero(row):
    return -row["norm_lo"] / (row["norm_hi"] - row["norm_lo"])


def test_fresh_noise_refuses_resized_arrays(smoke_dicom, tmp_path):
    from breastmri.data import preprocess

    cfg = load_config(ROOT / "configs" / "smoke.yaml", ["preprocess.image_size=96"])
    preprocess.run(smoke_dicom, tmp_path / "resized", cfg, progress=False)
    with pytest.raises(ValueError, match="acquisition matrix"):
        PairedSlices(tmp_path / "resized", "train", patch_size=32, fresh_noise=True)


def test_whole_slices_of_several_sizes_batch_by_size(smoke_data, tmp_path):
    data = tmp_path / "mixed"
    shutil.copytree(smoke_data, data)
    rows = read_manifest(data, "test")
    first = rows[0]["clean_file"]
    for kind in ("clean", "noisy", "truth"):  # crop one series to another matrix
        path = data / first.replace("_clean", f"_{kind}")
        np.save(path, np.load(path)[:, :48, :56])
    ds = PairedSlices(data, "test", batch_size=4)
    shapes = set()
    for b in range(len(ds)):
        noisy, clean = ds[b]
        assert noisy.shape == clean.shape
        shapes.add(noisy.shape[1:3])
    assert shapes == {(48, 56), (64, 64)}
    assert sum(len(ds.batch_rows(b)) for b in range(len(ds))) == len(rows)
    with pytest.raises(ValueError, match="one size"):
        PairedSlices(data, "test", batch_size=4, shuffle=True)


def test_non_square_acquisitions_are_evaluated_on_their_own_grid(smoke_run, smoke_data, tmp_path):
    """A series acquired 64 x 48 (rows > cols) is predicted and scored at 64 x 48, not 'unresized'."""
    import csv

    from breastmri.config import load_config as load

    data = tmp_path / "nonsquare"
    shutil.copytree(smoke_data, data)
    rows = read_manifest(data, "test")
    uid = rows[0]["series_uid"]
    for kind in ("clean", "noisy", "truth"):
        path = data / rows[0]["clean_file"].replace("_clean", f"_{kind}")
        np.save(path, np.ascontiguousarray(np.load(path)[:, :, 8:56]))
    with open(data / "manifest.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields, table = reader.fieldnames, list(reader)
    for r in table:
        if r["series_uid"] == uid:
            r["cols"] = "48"
    with open(data / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    cfg = load(smoke_run / "config.yaml")
    model = losses.load_model(smoke_run / "model.keras")
    ds = PairedSlices(data, "test", batch_size=4, context=context_offsets(cfg))
    for b in range(len(ds)):
        for meta, (n, c, t, p) in zip(ds.batch_rows(b), evaluation.predict_slices(model, ds, b, size_multiple(cfg))):
            expected = (64, 48) if meta["series_uid"] == uid else (64, 64)
            assert n.shape == c.shape == t.shape == p.shape == expected
            if meta["series_uid"] == uid:
                np.testing.assert_array_equal(c, np.load(data / meta["clean_file"])[meta["slice_index"]])
