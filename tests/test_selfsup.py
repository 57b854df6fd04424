"""Self-supervised training (train.mode noise2noise / noise2void) and degrade.model none, on the smoke pipeline.

What must hold: noise2noise pairs frames of one slice position of one series, registered, and its projection leaves
the target out; the blind spots hide the pixel (projection included) and the loss sees only them; training never
opens a clean or truth array; each mode trains, evaluates against the
truth and enhances a DICOM series; data with no clean image (degrade.model none) refuses supervised training.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import main
from breastmri.config import load_config
from breastmri.data.manifest import read_manifest
from breastmri.data.paired import PairedSlices
from breastmri.data.selfsup import blind_spot
from breastmri.restore import losses, training
from breastmri.restore.networks import context_offsets

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
# what each mode may see besides the target frame: noise2noise no time neighbour (one may be its target) and
# neither mode the pre-contrast guide (it averages the target frame in). noise2noise as configs/selfsup.yaml (with
# the projection), noise2void without it (the network without an identity path).
CONTEXT = {"noise2noise": ["model.context.time=0", "model.context.precontrast_frames=0", "model.context.projection=local"],
           "noise2void": ["model.context.time=1", "model.context.precontrast_frames=0", "model.context.projection=false"]}


def overrides(mode, *more):
    return sum((["--set", o] for o in [f"train.mode={mode}", *CONTEXT[mode], *more]), [])


def test_noise2noise_pairs_frames_of_the_same_position_and_series(smoke_data):
    # unregistered, so a target is a stored frame as it is (registration: its own test below)
    ds = PairedSlices(smoke_data, "train", batch_size=4, mode="noise2noise", noise2noise_frames=3, register=False)
    all_rows = read_manifest(smoke_data)
    assert ds.rows and all(r["time_index"] < 3 for r in ds.rows)
    seen_partners = set()
    for b in range(len(ds)):
        inputs, target = ds[b]
        assert inputs.shape[-1] == 1 and target.shape[-1] == 2
        assert np.all(target[..., 1] == 1)  # every pixel is a noise2noise target
        for j, row in enumerate(ds.batch_rows(b)):
            noisy = np.load(smoke_data / row["noisy_file"])
            np.testing.assert_array_equal(inputs[j, ..., 0], noisy[row["slice_index"]])
            # the target is another frame of this series at the same slice position, t < 3
            same = [i for i in range(len(noisy)) if np.array_equal(noisy[i], target[j, ..., 0])]
            assert len(same) == 1 and same[0] != row["slice_index"]
            partner = next(r for r in all_rows if r["series_uid"] == row["series_uid"]
                           and r["slice_index"] == same[0])
            assert partner["position_index"] == row["position_index"] and partner["time_index"] < 3
            assert partner["patient_id"] == row["patient_id"]
            seen_partners.add((row["slice_index"], same[0]))
    assert len(seen_partners) > 1


def test_noise2noise_refuses_context_that_holds_the_target(smoke_data):
    with pytest.raises(ValueError, match="target frame"):
        PairedSlices(smoke_data, "train", mode="noise2noise", context=([(0, 0), (-1, 0), (1, 0)], 0))
    with pytest.raises(ValueError, match="guide"):
        PairedSlices(smoke_data, "train", mode="noise2void", context=([(0, 0)], 2))


def _with_target_changed(data, row, slice_index, where, tmp_path):
    """A copy of the processed folder `data` in which frame `slice_index` of row's series has noise added at the
    pixels `where` (a boolean (H, W) mask): what a self-supervised input must not see."""
    copy = tmp_path / "changed"
    shutil.copytree(data, copy)
    path = copy / row["noisy_file"]
    noisy = np.load(path)
    noisy[slice_index][where] += np.random.default_rng(5).normal(0, 0.3, int(where.sum())).astype(noisy.dtype)
    np.save(path, noisy)
    return copy


def test_noise2noise_projection_leaves_the_target_frame_out(smoke_data, tmp_path):
    from breastmri.data.context import temporal_projection

    context = ([(0, 0)], 0, "local")
    # unregistered, so the target is the stored partner frame as it is
    ds = PairedSlices(smoke_data, "train", mode="noise2noise", noise2noise_frames=3, context=context, register=False)
    row = ds.rows[0]
    inputs, target = ds._selfsup_sample(row, np.random.default_rng(3))
    noisy = np.load(smoke_data / row["noisy_file"])
    partner = next(i for i in ds.partners(row) if np.array_equal(noisy[i], target[..., 0]))
    # the projection channel is that of every frame of the position but the target, the row's own frame taken
    stack = [f for f in ds.position_of(row) if f != partner]
    assert len(stack) == len(ds.position_of(row)) - 1 and row["slice_index"] in stack
    expected = temporal_projection(noisy[stack], "local")[stack.index(row["slice_index"])]
    np.testing.assert_allclose(inputs[..., 1], expected, atol=1e-6)
    # and changing the target frame changes the target only, never the input
    changed = _with_target_changed(smoke_data, row, partner, np.ones(noisy.shape[1:], bool), tmp_path)
    again = PairedSlices(changed, "train", mode="noise2noise", noise2noise_frames=3, context=context, register=False)
    inputs2, target2 = again._selfsup_sample(row, np.random.default_rng(3))
    np.testing.assert_array_equal(inputs2, inputs)
    assert not np.array_equal(target2[..., 0], target[..., 0])


def test_noise2void_input_never_sees_the_target_at_its_blind_spots(smoke_data, tmp_path):
    context = ([(0, 0), (-1, 0), (1, 0)], 0, "local")
    ds = PairedSlices(smoke_data, "train", mode="noise2void", mask_fraction=0.05, context=context)
    row = next(r for r in ds.rows if 0 < r["time_index"] < r["n_times"] - 1)
    inputs, target = ds._selfsup_sample(row, np.random.default_rng(4))
    blind = target[..., 1] == 1
    assert inputs.shape[-1] == 4 and blind.sum() == round(0.05 * blind.size)
    np.testing.assert_array_equal(inputs[..., 0][~blind], target[..., 0][~blind])
    # the target changed at its blind spots: not one input value changes, the projection's included
    changed = _with_target_changed(smoke_data, row, row["slice_index"], blind, tmp_path)
    again = PairedSlices(changed, "train", mode="noise2void", mask_fraction=0.05, context=context)
    inputs2, target2 = again._selfsup_sample(row, np.random.default_rng(4))
    np.testing.assert_array_equal(inputs2, inputs)
    assert not np.array_equal(target2[..., 0][blind], target[..., 0][blind])
    # training crops: blind spots drawn on the whole frame (the projection's stack), weighted inside the crop only
    crops = PairedSlices(smoke_data, "train", mode="noise2void", mask_fraction=0.05, context=context, patch_size=32)
    inputs, target = crops._selfsup_sample(row, np.random.default_rng(4))
    blind = target[..., 1] == 1
    assert inputs.shape == (32, 32, 4) and 0 < blind.sum() < 0.2 * blind.size
    np.testing.assert_array_equal(inputs[..., 0][~blind], target[..., 0][~blind])


def test_blind_spots_without_a_source_and_short_projections_are_refused(smoke_data, tmp_path):
    from test_data_factory import write_processed

    with pytest.raises(ValueError, match="no pixel"):
        blind_spot(np.zeros((1, 1), np.float32), np.random.default_rng(0), 0.5)
    with pytest.raises(ValueError, match="mask_fraction"):
        PairedSlices(smoke_data, "train", mode="noise2void", mask_fraction=0.6)
    write_processed(tmp_path)  # one time point per series: the projection would be the frame, noise included
    with pytest.raises(ValueError, match="3 or more time points"):
        PairedSlices(tmp_path, "train", mode="noise2void", context=([(0, 0)], 0, "local"))


def test_blind_spot_masks_the_fraction_with_a_neighbour_never_a_blind_spot():
    rng = np.random.default_rng(0)
    image = np.arange(40 * 48, dtype=np.float32).reshape(40, 48)  # every value names its pixel
    masked, weight = blind_spot(image, rng, fraction=0.2, radius=2)
    ys, xs = np.nonzero(weight)
    assert len(ys) == round(0.2 * 40 * 48)
    assert np.array_equal(masked[weight == 0], image[weight == 0])  # only the blind spots change
    for y, x in zip(ys, xs):
        sy, sx = divmod(int(masked[y, x]), 48)
        assert (sy, sx) != (y, x) and abs(sy - y) <= 2 and abs(sx - x) <= 2
        assert weight[sy, sx] == 0  # never another blind spot: its noise would sit a pixel from its target


def test_blind_spot_with_time_courses_takes_the_pixel_of_the_same_course():
    h, w = 40, 48
    image = np.arange(h * w, dtype=np.float32).reshape(h, w)  # every value names its pixel
    ys, xs = np.mgrid[:h, :w]
    # two frames in which pixels (y, 2j) and (y, 2j + 1) share their values, and no other pixel of a window does
    courses = np.stack([1000.0 * ys + 10.0 * (xs // 2), -3.0 * ys + xs // 2]).astype(np.float32)
    masked, weight = blind_spot(image, np.random.default_rng(2), fraction=0.1, radius=2, time_courses=courses)
    partners = 0
    for y, x in zip(*np.nonzero(weight)):
        sy, sx = divmod(int(masked[y, x]), w)
        assert (sy, sx) != (y, x) and weight[sy, sx] == 0 and abs(sy - y) <= 2 and abs(sx - x) <= 2
        partner = (y, x ^ 1)
        if weight[partner] == 0:
            assert (sy, sx) == partner
            partners += 1
    assert partners > 0.8 * weight.sum()


def test_masked_loss_sees_only_the_blind_spots():
    loss = losses.get_loss("mse+mae", masked=True)
    rng = np.random.default_rng(1)
    values = rng.random((2, 16, 16, 1)).astype(np.float32)
    weight = np.zeros_like(values)
    weight[:, 3, 5] = weight[:, 10, 2] = 1.0
    y_true = np.concatenate([values, weight], axis=-1)
    pred = rng.random((2, 16, 16, 1)).astype(np.float32)
    before = np.asarray(loss(y_true, pred))
    changed = pred.copy()
    changed[weight == 0] += 5.0  # far off everywhere the loss must not look
    np.testing.assert_allclose(np.asarray(loss(y_true, changed)), before, rtol=1e-6)
    err = (values - pred)[weight == 1].reshape(2, 2)
    np.testing.assert_allclose(before, (err ** 2 + np.abs(err)).mean(axis=1), rtol=1e-5)


def test_noise2void_batch_hides_the_target_pixels(smoke_data):
    ds = PairedSlices(smoke_data, "train", batch_size=2, patch_size=32, shuffle=True, augment=True,
                      mode="noise2void", mask_fraction=0.05, context=([(0, 0), (-1, 0), (1, 0)], 0))
    inputs, target = ds[0]
    assert inputs.shape[-1] == 3 and target.shape == inputs.shape[:3] + (2,)
    masked = target[..., 1] == 1
    assert 0.5 < masked.sum() / (0.05 * 2 * 32 * 32) < 1.5  # drawn on the whole 64^2 frame, then cropped
    # unmasked pixels of the target channel are the target; masked ones were replaced (values are continuous)
    np.testing.assert_array_equal(inputs[..., 0][~masked], target[..., 0][~masked])
    assert np.mean(inputs[..., 0][masked] != target[..., 0][masked]) > 0.95


@pytest.mark.parametrize("mode", ["noise2noise", "noise2void"])
def test_training_never_reads_clean_or_truth(mode, smoke_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(smoke_data, data)
    removed = [p for p in (data / "arrays").glob("*.npy") if p.name.endswith(("_clean.npy", "_truth.npy"))]
    assert removed
    for path in removed:
        path.unlink()
    cfg = load_config(SMOKE, [f"train.mode={mode}", "train.steps_per_epoch=2", *CONTEXT[mode]])
    result = training.train(cfg, data, tmp_path / "run")
    assert result["mode"] == mode and result["selection"]["monitor"] == "val_loss"
    assert (tmp_path / "run" / "model.keras").is_file()


@pytest.mark.parametrize("mode", ["noise2noise", "noise2void"])
def test_each_mode_trains_evaluates_enhances_and_is_benchmarked(mode, smoke_data, smoke_dicom, smoke_run, tmp_path):
    import benchmark
    from breastmri.enhance import pipeline

    run_dir = tmp_path / "run"
    main.main(["--config", SMOKE, "--data", str(smoke_data), "--run-dir", str(run_dir),
               *overrides(mode, "train.steps_per_epoch=3")])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["mode"] == mode and metrics["rician_correction"] is True
    assert metrics["train"]["selection"]["reference"].startswith("none")
    assert np.isfinite(metrics["truth"]["masked"]["model"]["psnr"]["mean"])
    series = next(p.parent for p in sorted(smoke_dicom.rglob("*.dcm")) if "dynamic" in p.parent.name)
    summary = pipeline.run(run_dir, series, tmp_path / "enhanced", progress=False)
    assert summary["series_done"] == 1, summary
    report = benchmark.main(["--run-dir", str(smoke_run), "--data", str(smoke_data), "--selfsup-runs", str(run_dir),
                             "--parts", "quality", "--max-slices", "4", "--methods", "noisy,unet",  # + the run's
                             "--out", str(tmp_path / "benchmark")])
    entry = report["headline"]["methods"][mode]
    assert entry["kind"] == "model" and not entry["default"] and np.isfinite(entry["psnr"])


def test_degrade_none_writes_no_clean_and_trains_self_supervised_only(smoke_dicom, tmp_path):
    from breastmri.data import preprocess

    cfg = load_config(SMOKE, ["degrade.model=none"])
    data = tmp_path / "data"
    preprocess.run(smoke_dicom, data, cfg, progress=False)
    rows = read_manifest(data)
    assert all(r["clean_file"] == "" and r["degrade_model"] == "none" and r["sigma_added"] == 0 for r in rows)
    assert not list((data / "arrays").glob("*_clean.npy"))
    # the noisy array is the input scan itself, normalized: the truth lies below it by the scan's own noise only
    row = rows[0]
    noisy, truth = np.load(data / row["noisy_file"]), np.load(data / row["truth_file"])
    assert 0 < np.std(noisy - truth) < 3 * row["sigma_source"]

    with pytest.raises(ValueError, match="no clean images"):
        PairedSlices(data, "train", patch_size=32, shuffle=True, context=context_offsets(cfg))
    run_dir = tmp_path / "run"
    main.main(["--config", SMOKE, "--data", str(data), "--run-dir", str(run_dir),
               *overrides("noise2void", "degrade.model=none")])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "model" not in metrics and "truth" in metrics  # no 3T reference exists, the truth does (demo data)
    # the notebook shows such a run against the truth alone (its panels read the missing clean image before)
    import papermill

    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "inspect_reconstructions.ipynb"
    papermill.execute_notebook(str(notebook), str(tmp_path / "executed.ipynb"), cwd=str(notebook.parents[1]),
                               kernel_name="python3", progress_bar=False,
                               parameters={"run_dir": str(run_dir), "data_dir": str(data), "n_examples": 1})


def test_noise2void_network_has_no_identity_path_to_the_centre_pixel():
    from breastmri.restore.networks import get_model

    cfg = load_config(SMOKE, ["train.mode=noise2void", *CONTEXT["noise2void"]])
    model = get_model(cfg)
    assert "neighbour_mean" in [layer.name for layer in model.layers]
    x = np.random.default_rng(0).random((1, 32, 32, 3)).astype(np.float32)
    bumped = x.copy()
    bumped[0, 10, 10, 0] += 1.0
    # untrained, the output is the ring mean of the 8 neighbours: the centre's own value does not reach it
    out, out_bumped = (np.asarray(model(a))[0, ..., 0] for a in (x, bumped))
    assert out[10, 10] == pytest.approx(out_bumped[10, 10], abs=1e-6)
    assert out[10, 11] == pytest.approx(out_bumped[10, 11] - 1 / 8, abs=1e-6)


def test_noise2void_masks_every_channel_that_is_the_target_frame(tmp_path):
    from test_data_factory import write_processed

    write_processed(tmp_path)  # one time point per series: +-1 time point reflects onto the target frame itself
    ds = PairedSlices(tmp_path, "train", batch_size=2, mode="noise2void", mask_fraction=0.05,
                      context=([(0, 0), (-1, 0), (1, 0)], 0))
    inputs, target = ds[0]
    for c in (1, 2):  # the blind spots are hidden in the copies too
        np.testing.assert_array_equal(inputs[..., c], inputs[..., 0])
    masked = target[..., 1] == 1
    assert np.any(inputs[..., 1][masked] != target[..., 0][masked])  # (the fixture's air is constant)


def test_noise2void_with_a_projection_starts_from_it():
    from breastmri.restore.networks import get_model

    cfg = load_config(SMOKE, ["train.mode=noise2void", "model.context.time=1", "model.context.precontrast_frames=0",
                              "model.context.projection=local"])
    model = get_model(cfg)
    assert "neighbour_mean" not in [layer.name for layer in model.layers]
    x = np.random.default_rng(0).random((1, 32, 32, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x))[0, ..., 0], x[0, ..., 3], atol=1e-6)


def test_noise2noise_target_is_registered_onto_its_input(smoke_data, tmp_path):
    from scipy import ndimage

    # two pre-contrast frames: the row's partner is the other one
    row = PairedSlices(smoke_data, "train", mode="noise2noise", noise2noise_frames=2).rows[0]
    data = tmp_path / "moved"
    shutil.copytree(smoke_data, data)
    path = data / row["noisy_file"]
    noisy = np.load(path)
    frame = noisy[row["slice_index"]].astype(np.float32)
    partner, = PairedSlices(smoke_data, "train", mode="noise2noise", noise2noise_frames=2).partners(row)
    # the partner: the input frame moved by (1.5, -2.0) px, with noise of its own
    noisy[partner] = (ndimage.shift(frame, (1.5, -2.0), order=3, mode="nearest")
                      + np.random.default_rng(0).normal(0, 0.01, frame.shape).astype(np.float32))
    np.save(path, noisy)
    inner = (slice(8, -8), slice(8, -8))
    for register in (True, False):
        ds = PairedSlices(data, "train", mode="noise2noise", noise2noise_frames=2, register=register)
        _, target = ds._selfsup_sample(row, np.random.default_rng(0))
        error = np.abs(target[..., 0] - frame)[inner].mean()
        if register:  # the shift is found to 1/20 px and undone: what is left is the partner's own noise
            np.testing.assert_allclose(ds._shifts[(row["noisy_file"], row["slice_index"], partner)], (-1.5, 2.0),
                                       atol=0.15)
            assert error < 0.02
            # pixels shifted in from outside the slice carry no weight: the last row, the first two columns
            assert np.all(target[-1, :, 1] == 0) and np.all(target[:, :2, 1] == 0)
            assert target[..., 1].mean() > 0.9
        else:
            np.testing.assert_array_equal(target[..., 0], noisy[partner])
            assert error > 0.02


def test_self_supervised_training_leaves_out_series_too_short_to_project(tmp_path, capsys):
    """A real tree holds a DCE beside single-frame series (a T2): noise2void with a projection trains on the
    dynamic and leaves the others out, saying so, where it refused the whole tree."""
    from test_data_factory import write_processed

    from breastmri.data.manifest import read_manifest, write_manifest

    rows = write_processed(tmp_path)
    dynamic = rows[0]["series_uid"]  # P1's 5 slices become 5 time points of one position
    for r in rows:
        r.update(time_index=r["slice_index"], position_index=0, n_times=5, n_positions=1) if r["series_uid"] == \
            dynamic else r.update(time_index=0, position_index=r["slice_index"], n_times=1, n_positions=5)
    write_manifest(tmp_path / "manifest.csv", rows)
    ds = PairedSlices(tmp_path, "train", mode="noise2void", context=([(0, 0)], 0, "local"), patch_size=16,
                      batch_size=2)
    assert {r["series_uid"] for r in ds.rows} == {dynamic} and len(read_manifest(tmp_path, "train")) == 10
    assert "1 series of fewer than 3 time points left out of train" in capsys.readouterr().out
