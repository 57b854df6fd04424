"""breastmri/studies/thesis.py: the thesis' min-max normalizer (normalizes, inverts exactly) and a tiny end-to-end study."""

import csv
import json

import numpy as np
import pytest

from breastmri.studies.thesis import (
    NORMALIZERS,
    MinMaxNormalizer,
    normalized_batches,
    parse_args,
    run_study,
)


def batch(seed=0, shape=(3, 16, 16, 1)):
    rng = np.random.default_rng(seed)
    clean = rng.random(shape) * np.array([1.0, 0.3, 2.0])[:, None, None, None]
    noisy = clean + rng.normal(0, 0.05, shape)
    return noisy, clean


def test_minmax_normalizes_each_image_by_its_noisy_min_and_max():
    noisy, clean = batch()
    norm = MinMaxNormalizer()
    stats = norm.stats(noisy)
    n, c = norm.apply(noisy, stats), norm.apply(clean, stats)
    for i in range(len(noisy)):
        assert n[i].min() == 0.0 and n[i].max() == pytest.approx(1.0, abs=1e-15)
        lo, hi = noisy[i].min(), noisy[i].max()
        np.testing.assert_allclose(c[i], (clean[i] - lo) / (hi - lo), rtol=1e-14)  # clean: the noisy's numbers


@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-14), (np.float32, 1e-6)])
def test_minmax_inverts_exactly(dtype, atol):
    noisy, clean = (a.astype(dtype) for a in batch(1))
    norm = MinMaxNormalizer()
    stats = norm.stats(noisy)
    for image in (noisy, clean):
        normalized = norm.apply(image, stats)
        assert normalized.dtype == dtype
        np.testing.assert_allclose(norm.invert(normalized, stats), image, rtol=0, atol=atol)


def test_minmax_constant_image_and_identity_normalizer():
    flat = np.full((1, 8, 8, 1), 0.3)
    norm = MinMaxNormalizer()
    stats = norm.stats(flat)
    np.testing.assert_array_equal(norm.invert(norm.apply(flat, stats), stats), flat)
    noisy, _ = batch()
    ours = NORMALIZERS["ours"]
    np.testing.assert_array_equal(ours.apply(noisy, ours.stats(noisy)), noisy)


def test_normalized_batches_wraps_a_dataset():
    noisy, clean = batch()

    class Two:
        epochs = 0

        def __len__(self):
            return 2

        def __getitem__(self, index):
            return noisy.astype(np.float32), clean.astype(np.float32)

        def on_epoch_end(self):
            self.epochs += 1

    source = Two()
    wrapped = normalized_batches(source, MinMaxNormalizer())
    assert len(wrapped) == 2
    n, c = wrapped[1]
    assert n.dtype == np.float32 and n.min() == 0 and c.shape == clean.shape
    wrapped.on_epoch_end()
    assert source.epochs == 1


@pytest.fixture
def tiny_data(tmp_path):
    """A preprocessing.py-like output: 4 patients x 4 slices of 32 x 32, 3 train and 1 val patient."""
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32] / 32
    rows = []
    for p in range(4):
        clean = np.stack([(((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.1 + 0.02 * k) * (1.0 + 0.1 * p) for k in range(4)])
        noisy = clean + rng.normal(0, 0.05, clean.shape)
        np.save(arrays / f"p{p}_clean.npy", clean.astype(np.float32))
        np.save(arrays / f"p{p}_noisy.npy", noisy.astype(np.float32))
        for k in range(4):
            rows.append({"patient_id": f"p{p}", "series_uid": f"s{p}", "slice_index": k,
                         "split": "val" if p == 3 else "train", "clean_file": f"arrays/p{p}_clean.npy",
                         "noisy_file": f"arrays/p{p}_noisy.npy"})
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader(), writer.writerows(rows)
    return tmp_path


def test_study_smoke_writes_every_artifact(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    summary = run_study(parse_args(["--data", str(tiny_data), "--run-dir", str(run_dir), "--readings", "4,2",
                                    "--image-size", "32", "--steps", "2", "--eval-every", "1",
                                    "--batch-size", "2", "--monitor-slices", "2"]))
    for name in ("config.yaml", "model.keras", "history.csv", "metrics.json", "reconstructions.png", "study.md"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["chosen_pools"] in (4, 2) and set(metrics["readings"]) == {"4", "2"}
    assert metrics["n_val_slices"] == 4 and metrics["budget"]["steps"] == {"4": 2, "2": 2}
    noisy = metrics["noisy_input"]
    # the min-max scale divides the error by the noisy image's range (> 1 here), so it reads higher
    assert noisy["minmax"]["psnr"]["mean"] > noisy["ours"]["psnr"]["mean"]
    assert summary["psnr_gain_db"]["ours"] == pytest.approx(
        metrics["model"]["ours"]["psnr"]["mean"] - noisy["ours"]["psnr"]["mean"])
    assert "thesis Table 1" in (run_dir / "study.md").read_text()


def test_learning_rate_warms_up_then_decays_to_zero():
    from breastmri.studies.thesis import learning_rate

    schedule = learning_rate(1e-3, warmup_steps=10, decay_steps=110)
    rate = lambda step: float(schedule(step))  # noqa: E731
    assert rate(0) == pytest.approx(1e-4) and rate(9) == pytest.approx(1e-3)
    assert rate(60) == pytest.approx(0.5e-3, rel=1e-3)  # halfway down the half-cosine
    assert rate(110) == pytest.approx(0.0, abs=1e-9) and rate(500) == pytest.approx(0.0, abs=1e-9)
    assert learning_rate(1e-3, 0) == 1e-3  # no warm-up, no decay: the constant
