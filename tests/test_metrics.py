import math

import numpy as np
import pytest
from scipy import stats
from skimage.metrics import (
    mean_squared_error,
    peak_signal_noise_ratio,
    structural_similarity,
)

from breastmri import metrics
from breastmri.metrics import (
    DATA_RANGE,
    body_mask,
    format_table,
    mean_ci,
    pair_metrics,
    slice_metrics,
    summarize,
    thesis_mse,
    thesis_psnr,
)


def rician(amplitude, sigma, rng):
    return np.hypot(amplitude + sigma * rng.standard_normal(amplitude.shape),
                    sigma * rng.standard_normal(amplitude.shape))


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    clean = rng.random((48, 40))
    pred = clean + 0.05 * rng.standard_normal(clean.shape)
    return pred, clean


def disk_slice(size=64, radius=24, value=0.8, sigma=0.03, seed=0):
    y, x = np.mgrid[0:size, 0:size]
    disk = (x - size / 2 + 0.5) ** 2 + (y - size / 2 + 0.5) ** 2 <= radius ** 2
    return rician(value * disk, sigma, np.random.default_rng(seed)), disk


def test_identical_images():
    clean = np.random.default_rng(1).random((32, 32))
    m = slice_metrics(clean, clean)
    assert m["mse"] == 0 and m["rmse"] == 0
    assert m["psnr"] == math.inf
    assert m["ssim"] == pytest.approx(1.0)
    masked = slice_metrics(clean, clean, mask=np.ones_like(clean, bool))
    assert masked["mse"] == 0 and masked["psnr"] == math.inf and masked["ssim"] == pytest.approx(1.0)


@pytest.mark.parametrize("c", [0.01, 0.1, 0.3])
def test_constant_offset(c):
    clean = np.random.default_rng(2).random((32, 32))
    m = slice_metrics(clean + c, clean)
    assert m["mse"] == pytest.approx(c ** 2, rel=1e-9)
    assert m["rmse"] == pytest.approx(c, rel=1e-9)
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / c ** 2), abs=1e-9)
    doubled = slice_metrics(clean + c, clean, data_range=2.0)
    assert doubled["psnr"] == pytest.approx(10 * math.log10(4 / c ** 2))


def test_agrees_with_skimage(pair):
    pred, clean = pair
    m = slice_metrics(pred.astype(np.float32), clean.astype(np.float32))
    p64, c64 = pred.astype(np.float32).astype(np.float64), clean.astype(np.float32).astype(np.float64)
    assert m["mse"] == pytest.approx(mean_squared_error(c64, p64), rel=1e-9)
    assert m["psnr"] == pytest.approx(peak_signal_noise_ratio(c64, p64, data_range=1.0), rel=1e-9)
    assert m["ssim"] == pytest.approx(structural_similarity(p64, c64, data_range=1.0), rel=1e-9)
    assert m["ssim"] < 0.99  # noisy enough that the comparison means something


def test_masked_metrics_by_hand(pair):
    pred, clean = pair
    mask = np.zeros(clean.shape, bool)
    mask[10:30, 5:25] = True
    m = slice_metrics(pred, clean, mask=mask)
    mse = np.mean((pred[mask] - clean[mask]) ** 2)
    assert m["mse"] == pytest.approx(mse, rel=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(mse), rel=1e-12)
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-12)
    _, ssim_map = structural_similarity(pred, clean, data_range=1.0, full=True)
    assert m["ssim"] == pytest.approx(ssim_map[mask].mean(), rel=1e-12)  # mask lies inside the border
    whole = slice_metrics(pred, clean)
    all_true = slice_metrics(pred, clean, mask=np.ones_like(mask))
    for key in metrics.METRICS:
        assert all_true[key] == pytest.approx(whole[key], rel=1e-12)
    assert m["mse"] != pytest.approx(whole["mse"], rel=1e-3)


def test_body_mask_recovers_disk():
    noisy_disk, disk = disk_slice()
    mask = body_mask(noisy_disk)
    assert mask.dtype == bool and mask.shape == disk.shape
    iou = (mask & disk).sum() / (mask | disk).sum()
    assert iou > 0.9


def test_body_mask_fills_enclosed_dark_region():
    slice_, disk = disk_slice(radius=26)
    y, x = np.mgrid[0:64, 0:64]
    hole = (x - 32) ** 2 + (y - 32) ** 2 <= 8 ** 2
    slice_[hole] = rician(np.zeros(hole.sum()), 0.03, np.random.default_rng(3))
    assert body_mask(slice_)[hole].all()


def test_all_air_slice_does_not_crash():
    rng = np.random.default_rng(4)
    air = rician(np.zeros((64, 64)), 0.02, rng)
    mask = body_mask(air)
    assert not mask.any()
    assert not body_mask(np.zeros((64, 64))).any()
    pred = air + 0.01 * rng.standard_normal(air.shape)
    row = pair_metrics(pred, air + 0.05, air)
    assert all(math.isnan(row[f"model_masked_{m}"]) for m in metrics.METRICS)
    assert all(math.isfinite(row[f"model_{m}"]) for m in metrics.METRICS)
    full = pair_metrics(pred, air + 0.05, *disk_slice()[:1])
    rows = [dict(row, patient_id="p1"), dict(full, patient_id="p2")]
    summary = summarize(rows)
    assert summary["n_slices"] == 2 and summary["n_slices_masked"] == 1
    assert summary["masked"]["model"]["mse"]["mean"] == pytest.approx(full["model_masked_mse"])
    assert "Model output" in format_table(summary)


def test_pair_metrics_matches_slice_metrics(pair):
    pred, clean = pair
    noisy = clean + 0.1
    mask = np.zeros(clean.shape, bool)
    mask[5:40, 8:35] = True
    row = pair_metrics(pred, noisy, clean, mask)
    assert list(row) == [f"{n}{r}_{m}"
                         for r in ("", "_masked") for n in ("model", "noisy") for m in metrics.METRICS]
    for m in metrics.METRICS:
        assert row[f"model_{m}"] == pytest.approx(slice_metrics(pred, clean)[m], rel=1e-12)
        assert row[f"noisy_masked_{m}"] == pytest.approx(slice_metrics(noisy, clean, mask)[m], rel=1e-12)


def test_thesis_formulas(pair):
    pred, clean = pair
    m = slice_metrics(pred, clean)
    assert thesis_mse(pred, clean) == pytest.approx(m["rmse"], rel=1e-12)
    assert thesis_psnr(pred, clean) == pytest.approx(m["psnr"] / 2, rel=1e-9)
    assert thesis_psnr(clean, clean) == math.inf


def test_bad_input_raises(pair):
    pred, clean = pair
    with pytest.raises(ValueError, match="same shape"):
        slice_metrics(pred[:-1], clean)
    with pytest.raises(ValueError, match="NaN"):
        slice_metrics(np.full_like(clean, np.nan), clean)
    with pytest.raises(ValueError, match="mask shape"):
        slice_metrics(pred, clean, mask=np.ones((3, 3), bool))


def test_mean_ci_known_case():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    ci = mean_ci(values)
    half = stats.t.ppf(0.975, 4) * math.sqrt(2.5) / math.sqrt(5)  # sample std of 1..5 is sqrt(2.5)
    assert ci["n"] == 5 and ci["mean"] == pytest.approx(3.0)
    assert ci["std"] == pytest.approx(math.sqrt(2.5))
    assert ci["ci_low"] == pytest.approx(3.0 - half) and ci["ci_high"] == pytest.approx(3.0 + half)
    assert half == pytest.approx(1.9632, abs=1e-4)
    wider = mean_ci(values, confidence=0.99)
    assert wider["ci_high"] - wider["ci_low"] > ci["ci_high"] - ci["ci_low"]


def test_mean_ci_grouped_vs_ungrouped():
    values = [1.0, 3.0, 10.0, 20.0, 22.0, 24.0, np.nan]
    groups = ["a", "a", "b", "c", "c", "c", "c"]
    grouped = mean_ci(values, groups)
    means = np.array([2.0, 10.0, 22.0])
    half = stats.t.ppf(0.975, 2) * means.std(ddof=1) / math.sqrt(3)
    assert grouped["n"] == 3
    assert grouped["mean"] == pytest.approx(means.mean())
    assert grouped["ci_low"] == pytest.approx(means.mean() - half)
    ungrouped = mean_ci(values)
    assert ungrouped["n"] == 6 and ungrouped["mean"] == pytest.approx(np.mean(values[:6]))
    assert ungrouped["mean"] != pytest.approx(grouped["mean"])
    single = mean_ci([4.0, 6.0], groups=["p", "p"])
    assert single["n"] == 1 and single["mean"] == 5.0 and math.isnan(single["ci_low"])
    with pytest.raises(ValueError):
        mean_ci([1.0, 2.0], groups=["a"])


def make_rows():
    rng = np.random.default_rng(5)
    rows = []
    for pid, n in (("P1", 2), ("P2", 3)):
        for i in range(n):
            clean = disk_slice(size=32, radius=12, seed=len(rows))[0]
            pred = clean + 0.02 * rng.standard_normal(clean.shape)
            noisy = clean + 0.06 * rng.standard_normal(clean.shape)
            row = pair_metrics(pred, noisy, clean)
            rows.append(dict(row, patient_id=pid, series_uid=f"{pid}.1", slice_index=i))
    return rows


def test_summarize_structure_and_values():
    rows = make_rows()
    summary = summarize(rows)
    assert {"model", "noisy_input", "masked", "per_patient", "patient_ci", "n_slices", "n_patients",
            "data_range"} <= set(summary)
    assert summary["n_slices"] == 5 and summary["n_patients"] == 2 and summary["data_range"] == DATA_RANGE
    masked = summary["masked"]
    for block in (summary["model"], summary["noisy_input"], masked["model"], masked["noisy_input"]):
        assert set(block) == set(metrics.METRICS)
        assert all(set(v) == {"mean", "std"} for v in block.values())
    psnr = [r["model_psnr"] for r in rows]
    assert summary["model"]["psnr"]["mean"] == pytest.approx(np.mean(psnr))
    assert summary["model"]["psnr"]["std"] == pytest.approx(np.std(psnr, ddof=1))
    assert summary["model"]["psnr"]["mean"] > summary["noisy_input"]["psnr"]["mean"]
    p2 = summary["per_patient"]["P2"]
    assert p2["n_slices"] == 3 and set(p2) == {"n_slices", "model", "noisy_input", "masked"}
    assert p2["noisy_input"]["ssim"] == pytest.approx(np.mean([r["noisy_ssim"] for r in rows[2:]]))
    ci = summary["patient_ci"]["masked"]["model"]["ssim"]
    assert ci["n"] == 2
    assert ci["mean"] == pytest.approx(np.mean([np.mean([r["model_masked_ssim"] for r in rows[:2]]),
                                               np.mean([r["model_masked_ssim"] for r in rows[2:]])]))
    assert summary["patient_ci"]["gain"]["psnr"]["mean"] > 0


def test_summarize_accepts_csv_strings_and_rejects_missing_columns():
    rows = [{k: str(v) for k, v in row.items()} for row in make_rows()]
    assert summarize(rows)["n_patients"] == 2
    with pytest.raises(ValueError, match="model_ssim"):
        summarize([{k: v for k, v in rows[0].items() if k != "model_ssim"}])


def test_summarize_reports_inf_psnr():
    rows = make_rows()
    clean = disk_slice(size=32, radius=12)[0]
    perfect = pair_metrics(clean, clean + 0.05, clean)
    assert perfect["model_psnr"] == math.inf
    summary = summarize(rows + [dict(perfect, patient_id="P3", series_uid="s", slice_index=0)])
    assert summary["model"]["psnr"]["mean"] == math.inf and math.isnan(summary["model"]["psnr"]["std"])
    assert summary["noisy_input"]["psnr"]["mean"] < math.inf
    assert "inf" in format_table(summary)


def test_format_table_rows():
    table = format_table(summarize(make_rows()))
    lines = table.splitlines()
    assert "MSE" in table and "PSNR" in table and "SSIM" in table
    for label in ("Model output", "Noisy input"):
        for region in ("whole image", "body mask"):
            assert any(label in line and region in line for line in lines)


def test_a_patient_table_of_one_patient_says_why_its_intervals_are_nan():
    one = [r for r in make_rows() if r["patient_id"] == "P1"]
    assert "one patient: an interval needs two" in format_table(summarize(one))
    assert "one patient" not in format_table(summarize(make_rows()))
