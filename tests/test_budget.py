"""Training at a budget: frames that share one draw, a run that starts from another run (the shipped default
model), and the shipped model itself."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from breastmri.config import ConfigError, load_config, load_run_config
from breastmri.data.context import temporal_projection
from breastmri.data.paired import PairedSlices
from breastmri.restore import losses, training

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def test_frames_of_one_position_share_their_crop_and_projection(smoke_data):
    """frames_per_draw 3 (every frame of the smoke series): each pass visits every slice once, in runs of one
    position; the frames of a run are cropped at one window, and their projection channel is the projection of
    the position's whole frames, cropped there."""
    args = dict(batch_size=6, shuffle=True, patch_size=32, context=([(0, 0)], 0, "local"), frames_per_draw=3)
    ds = PairedSlices(smoke_data, "train", **args)
    order = ds.order(1)
    assert sorted(order) == list(range(len(ds.rows)))
    runs = [order[i:i + 3] for i in range(0, len(order), 3)]
    assert all(len({ds.rows[i]["position_index"] for i in run}) == 1 for run in runs)
    ds.on_epoch_end()
    noisy, clean = ds[0]
    rows = ds.batch_rows(0)
    for start in (0, 3):
        windows = []
        for j in range(start, start + 3):
            stored = np.asarray(ds.array(rows[j]["clean_file"])[rows[j]["slice_index"]], np.float32)
            hits = [(y, x) for y in range(stored.shape[0] - 31) for x in range(stored.shape[1] - 31)
                    if np.array_equal(stored[y:y + 32, x:x + 32], clean[j, ..., 0])]
            assert hits, "the target is a crop of the 3T frame"
            windows.append(set(hits))
        window = set.intersection(*windows)
        assert window, "one window for the frames of a run"
        y, x = sorted(window)[0]
        frames = np.asarray(ds.array(rows[start]["noisy_file"])[ds.position_of(rows[start])], np.float32)
        projected = temporal_projection(frames, "local")
        for j in range(start, start + 3):
            t = rows[j]["time_index"]
            np.testing.assert_allclose(noisy[j, ..., 1], projected[t, y:y + 32, x:x + 32], atol=1e-5)
    with pytest.raises(ValueError, match="frames_per_draw"):
        PairedSlices(smoke_data, "train", mode="noise2void", frames_per_draw=2)


def test_fine_tuning_starts_from_the_run_and_keeps_it_unless_beaten(smoke_run, smoke_data, tmp_path):
    """train.init_from copies a run's weights; the start is validated and kept when no epoch beats it (a zero
    learning rate cannot); a run of another network, or one trained on a held-out patient, is refused."""
    cfg = load_config(SMOKE, [f"train.init_from={smoke_run}", "train.learning_rate=0", "train.ema_momentum=0"])
    result = training.train(cfg, smoke_data, tmp_path / "tuned")
    start = result["selection"]["start"]
    assert start["val_body_psnr"] > 0 and result["selection"]["init_from"] == str(smoke_run)
    assert "val_truth_psnr" in start  # the phantom's truth: the learning curve's measure
    assert result["selection"]["best_epoch"] == 0  # the start kept: named so, not as the epoch that did not beat it
    tuned = losses.load_model(tmp_path / "tuned" / "model.keras").get_weights()
    for a, b in zip(tuned, losses.load_model(smoke_run / "model.keras").get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="filters"):
        training.train(load_config(SMOKE, [f"train.init_from={smoke_run}", "model.filters=4"]), smoke_data,
                       tmp_path / "other")
    leaked = tmp_path / "leaked"
    shutil.copytree(smoke_run, leaked)
    split = json.loads((leaked / "split.json").read_text())
    split["patients"]["train"] += split["patients"]["test"]
    (leaked / "split.json").write_text(json.dumps(split))
    with pytest.raises(ConfigError, match="holds out"):
        training.train(load_config(SMOKE, [f"train.init_from={leaked}"]), smoke_data, tmp_path / "leak")
    with pytest.raises(ConfigError, match="ema_momentum"):
        training.train(load_config(SMOKE, ["train.ema_momentum=1"]), smoke_data, tmp_path / "ema")


def test_ship_copies_a_finished_run_with_its_record(smoke_run, smoke_data, tmp_path):
    from breastmri.restore.shipped import SHIPPED_FILES, ship

    out = ship(smoke_run, smoke_data, tmp_path / "models" / "default")
    assert sorted(p.name for p in out.iterdir()) == sorted(SHIPPED_FILES + ("training.json",))
    record = json.loads((out / "training.json").read_text())
    assert record["data"]["patients_per_split"] and record["command"] == "make default-model"
    (tmp_path / "half").mkdir()
    shutil.copy(smoke_run / "model.keras", tmp_path / "half")
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        ship(tmp_path / "half", smoke_data, tmp_path / "models" / "x")


def test_the_shipped_model_is_small_and_the_demo_can_start_from_it():
    """models/default: under 5 MB, the demo's network and inputs, and never trained on a patient the demo holds
    out (the cohort's first patients are the demo's, split by the same hash)."""
    from breastmri.data.splits import split_patients
    from breastmri.restore.shipped import DEFAULT_MODEL, MAX_BYTES
    from breastmri.simulate.phantom import patient_id

    assert (DEFAULT_MODEL / "model.keras").stat().st_size <= MAX_BYTES
    shipped = load_run_config(DEFAULT_MODEL / "config.yaml")  # as train.init_from reads it (keys added later)
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert shipped["model"] == demo["model"] and demo["train"]["init_from"] == "models/default"
    trained_on = set(json.loads((DEFAULT_MODEL / "split.json").read_text())["patients"]["train"])
    split = split_patients([patient_id(i) for i in range(demo["demo"]["patients"])], demo["preprocess"]["split"],
                           demo["seed"])
    held_out = {p for p, name in split.items() if name != "train"}
    assert held_out and trained_on and not trained_on & held_out
    assert len((DEFAULT_MODEL / "history.csv").read_text().splitlines()) > 1  # its learning curve


def test_a_truth_target_is_the_phantoms_noise_free_image_and_needs_one(smoke_data, tmp_path):
    args = dict(batch_size=4, context=([(0, 0)], 0, "registered"), target="truth")
    ds = PairedSlices(smoke_data, "val", **args)
    _, target = ds[0]
    np.testing.assert_array_equal(target, ds.truth_batch(0))
    data = tmp_path / "no_truth"
    shutil.copytree(smoke_data, data)
    manifest = (data / "manifest.csv").read_text().splitlines()
    column = manifest[0].split(",").index("truth_file")
    rows = [line.split(",") for line in manifest]
    for row in rows[1:]:
        row[column] = ""
    (data / "manifest.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match="truth"):
        PairedSlices(data, "val", **args)


def test_an_expected_target_is_the_truths_3t_magnitude_with_the_measured_floor(smoke_data):
    from breastmri.data.manifest import _zero
    from breastmri.simulate.degrade import expected_target

    ds = PairedSlices(smoke_data, "val", batch_size=4, context=([(0, 0)], 0, "registered"), target="expected")
    _, target = ds[0]
    rows = ds.rows[:4]
    assert all(r["noise_channels"] >= 1 for r in rows)  # the phantom's air fits a sum of squares of channels
    truth = ds.truth_batch(0)
    expected = [expected_target(t[..., 0], r["sigma_source"], r["noise_channels"], _zero(r))
                for t, r in zip(truth, rows)]
    np.testing.assert_allclose(target[..., 0], np.stack(expected), atol=1e-6)
    assert (target[..., 0] > truth[..., 0]).all()  # the floor lifts every pixel, most of all the air


def test_enhance_uses_the_shipped_model_without_model(smoke_dicom, tmp_path):
    import enhance
    from breastmri.restore.shipped import DEFAULT_MODEL

    patient = sorted((smoke_dicom / "QIN-BREAST").iterdir())[0]
    summary = enhance.main(["--input", str(patient), "--output", str(tmp_path / "out")])
    assert summary["series_done"] >= 2 and summary["model"] == str((DEFAULT_MODEL / "model.keras").resolve())


def test_a_thesis_model_on_data_of_another_size_is_refused_before_training(smoke_data, tmp_path):
    """The thesis autoencoder takes exactly S x S slices: trained on data preprocessed at another size it failed
    inside Keras ("expected shape=(None, 512, 512, 1)"); it is refused first, with what to set."""
    cfg = load_config(SMOKE, ["model.name=thesis_autoencoder", "model.pools=2", "preprocess.image_size=512"])
    with pytest.raises(ConfigError, match="preprocess.image_size"):
        training.train(cfg, smoke_data, tmp_path / "thesis")
