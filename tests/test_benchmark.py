"""benchmark.py on the smoke pipeline: every method, the per-patient intervals, the noise levels given to the
classical methods, the report files, and the speed and scaling parts at tiny size."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import benchmark
from breastmri.config import load_config, save_config
from breastmri.evaluate import (
    benchmark_calibration,
    benchmark_quality,
    benchmark_runs,
    benchmark_speed,
)

ROOT = Path(__file__).resolve().parents[1]
REQUESTED = ["noisy", "nlm", "tv", "wavelet", "bm3d", "thesis", "unet"]


@pytest.fixture(scope="module")
def thesis_run(tmp_path_factory, smoke_data):
    """A thesis_autoencoder run dir (untrained, 256x256: the smallest size it takes), 'evaluated' on the
    64x64 smoke data, so the benchmark has to notice that the sizes do not fit."""
    from breastmri.restore.networks import get_model

    cfg = load_config(ROOT / "configs" / "smoke.yaml",
                      ["model.name=thesis_autoencoder", "preprocess.image_size=256", "train.patch_size=null"])
    run_dir = tmp_path_factory.mktemp("runs") / "thesis"
    run_dir.mkdir()
    get_model(cfg).save(run_dir / "model.keras")
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "metrics.json").write_text(json.dumps({"data_dir": str(smoke_data),
                                                      "train": {"seconds": 1.5, "epochs_run": 1}}))
    return run_dir


@pytest.fixture(scope="module")
def quality(smoke_run, smoke_data, thesis_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark_quality")
    report = benchmark.main(["--run-dir", str(smoke_run), "--data", str(smoke_data), "--thesis-run", str(thesis_run),
                             "--parts", "quality", "--max-slices", "4", "--calibrate-slices", "10",
                             "--methods", ",".join(REQUESTED), "--out", str(out)])
    return report, out


def test_every_method_gives_finite_metrics_on_the_same_slices(quality):
    report, out = quality
    summary = report["quality"]["summary"]
    expected = ["noisy", "nlm", "tv", "wavelet", "bm3d", "unet"]
    expected += [f"{m}_gauss" for m in benchmark_quality.CLASSICAL]  # smoke data: field model, Rician
    assert sorted(summary) == sorted(expected)
    for method in expected:
        s = summary[method]
        assert s["n_slices"] == 4 and s["n_patients"] >= 1
        for region in ("whole", "masked"):
            for metric in ("psnr", "ssim", "mse"):
                assert math.isfinite(s[region][metric]["mean"]), (method, region, metric)
        assert s["ms_per_slice"] >= 0
    with open(out / "benchmark_per_slice.csv") as f:
        rows = list(csv.DictReader(f))
    slices = {m: sorted((r["series_uid"], r["slice_index"]) for r in rows if r["method"] == m) for m in expected}
    assert all(v == slices["noisy"] for v in slices.values())  # the same 4 slices for every method
    # Run with the recorded sigma, BM3D beats its input (a wrong sigma would not) and no classical method loses
    # much; the smoke phantom's input is at the real slice's SNR, where wavelet shrinkage gains next to nothing
    assert summary["bm3d"]["gain_vs_noisy"]["whole"]["psnr"]["mean"] > 0.5
    for method in benchmark_quality.CLASSICAL:
        assert summary[method]["gain_vs_noisy"]["whole"]["psnr"]["mean"] > -0.5, method


def test_thesis_model_on_data_of_another_size_is_skipped_with_a_note(quality):
    report, out = quality
    reason = report["quality"]["skipped"]["thesis"]
    assert "256x256" in reason and "64x64" in reason and "not resized" in reason
    assert "thesis" not in report["quality"]["summary"]
    assert report["budget"]["thesis"]["train_seconds"] == 1.5  # its budget is still reported
    md = (out / "benchmark.md").read_text()
    assert "| thesis | skipped: thesis_autoencoder takes 256x256" in md


def test_report_files_have_a_row_per_requested_method(quality, smoke_data):
    report, out = quality
    md = (out / "benchmark.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    for method in REQUESTED + [f"{m}_gauss" for m in benchmark_quality.CLASSICAL]:
        assert any(line.startswith(f"| {method} |") for line in table), method
    for header in (str(smoke_data), "field model", "TensorFlow", "## Training budget", "## Quality"):
        assert header in md
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["quality"]["summary"]["bm3d"]["masked"]["psnr"]["mean"] == pytest.approx(
        report["quality"]["summary"]["bm3d"]["masked"]["psnr"]["mean"])
    assert saved["data"]["eval_slices_used"] == 4 and saved["data"]["split"] == "test" and saved["data"]["truth"]
    assert "### truth reference" in md and "### 3T reference" in md
    head = saved["headline"]
    assert head["reference"] == "truth" and head["split"] == "test" and head["region"] == "body"
    assert head["methods"]["unet"]["default"] and head["methods"]["unet"]["kind"] == "model"
    assert head["methods"]["noisy"]["kind"] == "input" and head["methods"]["bm3d"]["kind"] == "classical"
    assert head["methods"]["bm3d"]["psnr"] == pytest.approx(
        saved["quality"]["summary"]["bm3d"]["truth_masked"]["psnr"]["mean"])
    c = saved["quality"]["ceilings"]  # smoke data: SNR ratio 0.5, so 10 log10(4) = 6.0 dB and 10 log10(4/3) = 4.8 dB
    assert 4.5 < c["gain_3t_vs_truth"] < 7.5 and 3.5 < c["gain_truth_vs_3t"] < 6.0
    assert c["gain_mmse_vs_3t"] > c["gain_truth_vs_3t"] + 0.5  # the noisy reference rewards keeping some noise
    assert "References, on the same" in md
    calibration = saved["quality"]["calibration_record"]
    assert calibration["reference"] == "truth" and calibration["split"] == "train"
    assert set(calibration["chosen"]) == set(benchmark_quality.CLASSICAL)
    png = (out / "benchmark.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def _row(method, patient, slice_index, psnr, ssim=0.5, mse=0.01):
    return {"method": method, "patient_id": patient, "series_uid": f"s-{patient}", "slice_index": slice_index,
            "psnr": psnr, "ssim": ssim, "mse": mse, "masked_psnr": psnr - 1, "masked_ssim": ssim,
            "masked_mse": mse, "ms": 2.0}


def test_aggregate_is_over_patient_means_with_a_t_interval():
    from scipy import stats

    # Patient A has two slices (10, 12 dB), patient B one (20 dB): the slice mean is 14, the patient mean 15.5.
    rows = [_row("m", "A", 0, 10.0), _row("m", "A", 1, 12.0), _row("m", "B", 0, 20.0),
            _row("noisy", "A", 0, 9.0), _row("noisy", "A", 1, 9.0), _row("noisy", "B", 0, 15.0)]
    s = benchmark_quality.aggregate(rows)["m"]
    psnr = s["whole"]["psnr"]
    patient_means = np.array([11.0, 20.0])
    half = stats.t.ppf(0.975, 1) * patient_means.std(ddof=1) / math.sqrt(2)
    assert psnr["n"] == 2 and s["n_patients"] == 2 and s["n_slices"] == 3
    assert psnr["mean"] == pytest.approx(15.5)
    assert psnr["slice_mean"] == pytest.approx(14.0)
    assert psnr["ci_low"] == pytest.approx(15.5 - half) and psnr["ci_high"] == pytest.approx(15.5 + half)
    assert half == pytest.approx(57.18, abs=0.01)  # t(0.975, 1 dof) = 12.706, std 6.364
    assert s["masked"]["psnr"]["mean"] == pytest.approx(14.5)
    # gain over the input, paired per slice: A (1 + 3) / 2 = 2, B 5 -> mean over patients 3.5
    assert s["gain_vs_noisy"]["whole"]["psnr"]["mean"] == pytest.approx(3.5)
    # one patient only: a mean but no interval
    single = benchmark_quality.aggregate([_row("m", "A", 0, 10.0), _row("m", "A", 1, 12.0)])["m"]["whole"]["psnr"]
    assert single["mean"] == pytest.approx(11.0) and math.isnan(single["ci_low"])


def test_real_detail_tells_smoothed_anatomy_from_noise():
    """benchmark_real._detail on a known case: a dynamic of fine texture with independent noise per frame. The
    noisy frames change nothing alike in every frame and keep the detail; the same frames blurred lose the fine
    bands and make an error common to every frame."""
    from scipy.ndimage import gaussian_filter

    from breastmri.evaluate.benchmark_real import _detail

    rng = np.random.default_rng(0)
    anatomy = 0.5 + 0.1 * gaussian_filter(rng.standard_normal((64, 64)), 0.7)
    reference = np.repeat(anatomy[None, None], 20, axis=0)             # (T, P, H, W), noise-free 3T frames
    sigma = 0.01
    noisy = reference + sigma * rng.standard_normal(reference.shape)
    blurred = gaussian_filter(noisy, (0, 0, 1.0, 1.0))
    body = np.ones((1, 64, 64), bool)
    detail = _detail({"noisy": noisy, "blurred": blurred}, reference, body, sigma)
    kept_noisy, kept_blurred = detail["noisy"], detail["blurred"]
    assert kept_noisy["common_error"] == pytest.approx(1 / 20, rel=0.3)  # noise alone: its variance / T
    assert all(0.95 < k < 1.1 for k in kept_noisy["detail_kept"])
    assert kept_blurred["common_error"] > 10 * kept_noisy["common_error"]
    assert kept_blurred["detail_kept"][-1] < 0.2 < kept_blurred["detail_kept"][0]
    assert kept_blurred["detail_kept"] == sorted(kept_blurred["detail_kept"], reverse=True)


def test_noise_levels_follow_the_degradation_model():
    noisy = np.zeros((64, 64), np.float32)
    field = {"degrade_model": "field", "sigma_source": 0.03, "sigma_added": 0.04, "rows": 64, "cols": 64,
             "norm_lo": -1.0, "norm_hi": 99.0}
    levels = benchmark_quality.noise_levels(field, noisy)
    assert levels["sigma_total"] == pytest.approx(0.05) and levels["sigma_pixel"] == pytest.approx(0.05)
    assert levels["sigma_reference"] == pytest.approx(0.03) and levels["rician"]
    assert levels["zero"] == pytest.approx(0.01)
    gaussian = dict(field, degrade_model="gaussian")
    levels = benchmark_quality.noise_levels(gaussian, noisy)
    assert levels["sigma_total"] == pytest.approx(0.04) and not levels["rician"]
    assert levels["sigma_reference"] == 0
    # upsampled 48 -> 64: the pixel std of the noise drops, and the denoiser is told so
    resized = dict(field, rows=48, cols=48)
    gain = benchmark_quality.resize_noise_gains(48, 48, 64)[0]
    assert 0.7 < gain < 0.95
    assert benchmark_quality.noise_levels(resized, noisy)["sigma_pixel"] == pytest.approx(0.05 * gain)


def test_estimated_sigma_is_corrected_for_the_resize():
    """Without a recorded sigma, skimage's estimator reads upsampled noise far too low; the correction by its
    response to resized white noise gets the acquisition sigma back."""
    from breastmri.data.grid import resize_square
    from breastmri.restore.denoisers import estimate_sigma

    rng = np.random.default_rng(1)
    sigma = 0.05
    acquired = 0.5 + sigma * rng.standard_normal((1, 96, 96)).astype(np.float32)
    noisy = resize_square(acquired, 128)[0]
    row = {"degrade_model": "", "sigma_source": None, "sigma_added": None, "rows": 96, "cols": 96}
    levels = benchmark_quality.noise_levels(row, noisy)
    assert levels["source"] == "estimated"
    assert estimate_sigma(noisy) < 0.8 * sigma  # the raw estimate is biased low
    assert levels["sigma_total"] == pytest.approx(sigma, rel=0.12)
    assert levels["sigma_pixel"] == pytest.approx(float(noisy.std()), rel=0.12)


@pytest.mark.parametrize("method", ["tv", "wavelet"])
def test_without_resize_the_classical_run_equals_denoisers_rician_path(smoke_data, method):
    from breastmri.data.paired import PairedSlices
    from breastmri.restore.denoisers import denoise

    ds = PairedSlices(smoke_data, "test", batch_size=1, max_slices=1)
    noisy = ds[0][0][0, ..., 0]
    row = ds.batch_rows(0)[0]
    levels = benchmark_quality.noise_levels(row, noisy)
    assert levels["sigma_pixel"] == pytest.approx(levels["sigma_total"])  # 64 -> 64: no resize
    main, plain, amplitude = benchmark_quality.classical_denoise(method, noisy, levels)
    zero = levels["zero"]
    expected = denoise(method, noisy - zero, levels["sigma_total"], rician=True,
                       reference_sigma=row["sigma_source"]) + zero
    np.testing.assert_allclose(main, expected, atol=1e-5)
    np.testing.assert_allclose(plain, denoise(method, noisy - zero, levels["sigma_total"], rician=False) + zero,
                               atol=1e-5)
    # the amplitude estimate (scored against the truth) is the Rician inversion without the 3T floor
    np.testing.assert_allclose(amplitude, denoise(method, noisy - zero, levels["sigma_total"], rician=True) + zero,
                               atol=1e-5)


def test_calibration_picks_the_best_sigma_multiplier_on_random_tissue_slices(smoke_data):
    from breastmri.data.manifest import read_manifest
    from breastmri.metrics import body_mask

    scales, table, note, record = benchmark_calibration.calibrate(["tv"], smoke_data, 10, seed=0)
    assert note is None and "1.0" in table["tv"]
    assert set(table["tv"]) <= {str(s) for s in benchmark_calibration.SIGMA_SCALES}
    assert table["tv"][str(scales["tv"])] == max(table["tv"].values())
    assert record["n_slices"] == 10 and record["reference"] == "truth" and record["chosen"]["tv"]["sigma_scale"] == \
        scales["tv"]
    train = {(r["series_uid"], r["slice_index"]) for r in read_manifest(smoke_data, "train")}
    picked = [(s["series_uid"], s["slice_index"]) for s in record["slices"]]
    assert set(picked) <= train and len(set(picked)) == 10
    in_order = [(r["series_uid"], r["slice_index"]) for r in read_manifest(smoke_data, "train")]
    assert picked != in_order[:10]  # drawn at random, not the first (edge) slices
    for row, _, _, truth, mask in benchmark_calibration.tissue_slices(smoke_data, "train", 10, seed=0):
        assert np.array_equal(mask, body_mask(truth)) and mask.mean() >= 0.1
    assert benchmark_calibration.calibrate(["tv"], smoke_data, 10, seed=0)[3]["slices"] == record["slices"]  # seeded
    assert benchmark_calibration.calibrate(["tv"], smoke_data, 0)[0] == {"tv": 1.0}


def test_climb_finds_the_grid_maximum_without_the_runs_past_the_peak():
    grid = (0.6, 0.8, 1.0, 1.25)
    tried = []

    def score(peak):
        def f(x):
            tried.append(x)
            return -abs(x - peak)
        return f

    best, scores = benchmark_calibration.climb(grid, 2, score(1.0))
    assert best == 1.0 and 0.6 not in scores and tried == [1.0, 0.8, 1.25]  # 0.6 lies past the peak
    best, scores = benchmark_calibration.climb(grid, 2, score(0.5))
    assert best == 0.6 and set(scores) == set(grid)                        # a maximum at the edge is reached


def test_thesis_run_is_found_next_to_the_run(tmp_path, smoke_run, thesis_run):
    runs = tmp_path / "runs"
    shutil.copytree(smoke_run, runs / "unet", ignore=shutil.ignore_patterns("logs", "backup"))
    data = json.loads((smoke_run / "metrics.json").read_text())["data_dir"]
    for name, data_dir in (("thesis_other_data", str(tmp_path / "elsewhere")), ("thesis", data)):
        shutil.copytree(thesis_run, runs / name)
        metrics = json.loads((runs / name / "metrics.json").read_text())
        (runs / name / "metrics.json").write_text(json.dumps(dict(metrics, data_dir=data_dir)))
    assert benchmark_runs.find_thesis_run(runs / "unet", data) == runs / "thesis"
    assert benchmark_runs.find_thesis_run(runs / "unet", tmp_path / "no_such_data") is None


def test_model_for_speed_rebuilds_fixed_size_models_only_when_needed(thesis_run):
    run = benchmark_runs.read_run(thesis_run)
    trained = benchmark_runs.load_model(run)
    model, note = benchmark_speed.model_for_speed(run, trained, 256)
    assert model is trained and note == "trained weights"
    model, note = benchmark_speed.model_for_speed(run, trained, 512)
    assert tuple(model.inputs[0].shape[1:3]) == (512, 512) and "untrained" in note
    model, note = benchmark_speed.model_for_speed(run, trained, 64)
    assert model is None and "multiple of 256" in note


def test_cli_rejects_unknown_methods_and_missing_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--run-dir", str(tmp_path), "--methods", "noisy,foo"])
    assert "foo" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        benchmark.main(["--run-dir", str(tmp_path / "missing"), "--parts", "quality"])
    assert "config.yaml" in capsys.readouterr().err


def test_speed_part_at_tiny_size_reports_positive_numbers(smoke_run, smoke_data, thesis_run, tmp_path):
    report = benchmark.main(["--run-dir", str(smoke_run), "--data", str(smoke_data), "--thesis-run", str(thesis_run),
                             "--parts", "speed", "--methods", "noisy,tv,bm3d,unet,thesis", "--speed-size", "64",
                             "--speed-steps", "2", "--speed-warmup", "1", "--speed-reps", "1",
                             "--speed-series", "2", "--scaling-series", "2", "--out", str(tmp_path)])
    speed = report["speed"]
    assert speed["preprocessing"]["slices_per_s"] > 0 and speed["preprocessing"]["series"] == 2
    unet = speed["models"]["unet"]
    for timing in unet["inference"]:
        assert timing["ms_per_slice"] > 0 and timing["gflop_per_s"] > 0 and timing["gflops_per_slice"] > 0
        assert timing["speedup_vs_bm3d"] > 0
        # the default context's input stacks (the local projection) are part of what a slice costs
        assert timing["ms_per_slice"] == pytest.approx(timing["ms_per_slice_network"] + unet["context"]["ms_per_slice"])
    assert unet["context"]["frames"] == 25 and unet["context"]["ms_per_slice"] > 0
    assert [t["batch"] for t in unet["inference"]] == [1, 4]
    training = unet["training"]
    assert training["pipeline_images_per_s"] > 0 and training["in_memory_images_per_s"] > 0
    assert training["pipeline_cost"] < 1
    assert speed["classical"]["bm3d"]["ms_per_slice"] > 0 and speed["classical"]["tv"]["ms_per_slice"] > 0
    thesis = speed["models"]["thesis"]  # 64 px: no thesis autoencoder can take it, and the report says why
    assert "multiple of 256" in thesis["inference_skipped"] and "256x256" in thesis["training_skipped"]
    md = (tmp_path / "benchmark.md").read_text()
    assert "## Speed" in md and "| inference | unet | 64² x 1 |" in md


def test_preprocessing_child_reports_its_own_memory(smoke_dicom, smoke_cfg, tmp_path):
    """The scaling child's peak memory is its own, not the TensorFlow parent's (Linux carries the parent's
    resident size into the child's ru_maxrss)."""
    from breastmri.dicom.index import index_tree

    series, _, _ = index_tree(smoke_dicom)
    folder = Path(series[0].frames[0][0]).parent
    tree = benchmark_speed.subset_tree(smoke_dicom, [folder], tmp_path / "tree")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(smoke_cfg))
    result = benchmark_speed._run_child(["--_scaling-child", "preprocess", "--n", "1", "--child-root", str(tree),
                                   "--child-out", str(tmp_path / "out"), "--child-config", str(config)])
    assert result["series"] == 1 and result["slices"] == len(series[0].frames) and result["seconds"] > 0
    assert 0 < result["peak_rss_mib"] < 400  # no TensorFlow in this child; the test process has it
    assert benchmark_speed._peak_rss_mib() > result["peak_rss_mib"]


def test_scaling_part_with_one_size_each(smoke_run, smoke_data, tmp_path):
    report = benchmark.main(["--run-dir", str(smoke_run), "--data", str(smoke_data), "--parts", "scaling",
                             "--methods", "unet", "--speed-series", "1", "--scaling-series", "1",
                             "--scaling-slices", "4", "--out", str(tmp_path)])
    (pre,), (infer,) = report["scaling"]["preprocess"], report["scaling"]["infer"]
    assert pre["n_series"] == 1 and pre["slices"] > 0 and pre["seconds"] > 0
    assert infer["slices"] == 4 and infer["seconds"] > 0 and infer["image_size"] == [64, 64]
    assert infer["peak_rss_mib"] >= infer["peak_anon_rss_mib"] > 0
    assert "| inference | 4 slices | 4 |" in (tmp_path / "benchmark.md").read_text()


@pytest.mark.slow
def test_scaling_part_runs_each_size_in_a_child(smoke_run, smoke_data, tmp_path):
    report = benchmark.main(["--run-dir", str(smoke_run), "--data", str(smoke_data), "--parts", "scaling",
                             "--methods", "unet", "--speed-series", "1", "--scaling-series", "1,2",
                             "--scaling-slices", "4,8", "--out", str(tmp_path)])
    scaling = report["scaling"]
    assert [e["n_series"] for e in scaling["preprocess"]] == [1, 2]
    assert [e["slices"] for e in scaling["infer"]] == [4, 8]
    for entry in scaling["preprocess"] + scaling["infer"]:
        assert entry["seconds"] > 0 and entry["peak_rss_mib"] > 0
    assert scaling["infer_time_per_slice_ratio"] > 0 and "preprocess_peak_rss_growth_mib" in scaling
    assert "## Scaling" in (tmp_path / "benchmark.md").read_text()


# -----------------------------------------------------------------------------
# multi-frame methods and the kinetics check

@pytest.fixture(scope="module")
def multiframe(smoke_run, smoke_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark_multiframe")
    report = benchmark.main(["--run-dir", str(smoke_run), "--data", str(smoke_data), "--parts", "quality",
                             "--max-slices", "3", "--calibrate-slices", "4", "--calibrate-stacks", "1",
                             "--kinetics-lesions", "1", "--methods", "noisy,tv,bm4d,mppca,tpca,nordic,unet",
                             "--out", str(out)])
    return report, out


def test_the_multiframe_methods_give_finite_metrics_on_the_same_slices(multiframe):
    report, out = multiframe
    summary = report["quality"]["summary"]
    for method in ("bm4d", "mppca", "tpca", "nordic", "bm4d_gauss", "mppca_gauss", "tpca_gauss", "nordic_gauss"):
        s = summary[method]
        assert s["n_slices"] == 3 and s["ms_per_slice"] > 0
        for region in ("whole", "masked", "truth_masked"):
            assert math.isfinite(s[region]["psnr"]["mean"]) and math.isfinite(s[region]["ssim"]["mean"])
    # BM4D, MP-PCA and NORDIC use the repeated frames and beat their input. The projection alone (tpca) need not:
    # its noise level comes from the whole slice, which the breathing chest and the beating heart inflate on this
    # 64 px, 3-frame phantom, and it then cuts signal (docs/limits.md)
    for method in ("bm4d", "mppca", "nordic"):
        assert summary[method]["gain_vs_noisy"]["truth_masked"]["psnr"]["mean"] > 0.5, method
    with open(out / "benchmark_per_slice.csv") as f:
        rows = list(csv.DictReader(f))
    slices = {m: sorted((r["series_uid"], r["slice_index"]) for r in rows if r["method"] == m)
              for m in ("noisy", "bm4d", "mppca", "tpca", "nordic", "unet")}
    assert slices["bm4d"] == slices["noisy"] == slices["mppca"] == slices["tpca"] == slices["nordic"] == slices["unet"]
    head = report["headline"]["methods"]
    assert {head[m]["kind"] for m in ("bm4d", "mppca", "tpca", "nordic")} == {"classical"}
    assert "| bm4d |" in (out / "benchmark.md").read_text()


def test_stacks_denoised_in_worker_processes_equal_those_denoised_in_turn(smoke_data, monkeypatch):
    """Stacks.prefetch runs the multi-frame stacks in spawned processes: each slice reads what the sequential
    denoise() gives it, whole slices and windows alike."""
    from breastmri.data.manifest import read_manifest

    monkeypatch.setattr(benchmark_quality, "workers_for", lambda method: 2)  # two workers on any machine

    rows = [r for r in read_manifest(smoke_data) if r["split"] == "test" and r.get("time_index") is not None]
    rows = [r for r in rows if r["time_index"] in (0, 1)][:4]
    window = (slice(8, 48), slice(4, 60))
    for method in ("tpca", "nordic"):
        fetched, serial = benchmark_quality.Stacks(smoke_data), benchmark_quality.Stacks(smoke_data)
        fetched.prefetch(method, rows)
        fetched.prefetch(method, rows, [window] * len(rows))
        assert len(fetched._cache) == 2 * len({(r["series_uid"], r["position_index"]) for r in rows}) > 2
        for row in rows:
            levels = benchmark_quality.noise_levels(row, serial.frames(row))
            for w in (None, window):
                (main, _, amplitude), ms, fallback = fetched.denoise(method, row, levels, w)
                expected = serial.denoise(method, row, levels, w)[0]
                assert fallback is None and ms > 0 and main.shape == expected[0].shape
                np.testing.assert_allclose(amplitude, expected[2], atol=1e-5)


def test_calibration_records_the_multiframe_methods(multiframe):
    report, _ = multiframe
    record = report["quality"]["calibration_record"]
    chosen = record["chosen"]
    assert set(chosen) == {"tv", "bm4d", "mppca", "nordic"}
    assert record["candidates"]["mppca"] == list(benchmark_quality.MPPCA_RADII)
    assert len(record["multiframe_stacks"]) == 1 and record["multiframe_stacks"][0]["series_uid"]
    table = report["quality"]["calibration"]
    # each multi-frame grid climbed from its start, both ways, to a peak: the start, a neighbour on each side
    # (unless at the grid's end), and the best tried is the one chosen
    for method, key in (("bm4d", "sigma_scale"), ("nordic", "sigma_scale"), ("mppca", "patch_radius")):
        grid = benchmark_calibration.MULTIFRAME_CANDIDATES[method]
        start = grid.index(benchmark_calibration.MULTIFRAME_START[method])
        tried = [c for c in grid if str(c) in table[method]]
        assert set(table[method]) == {str(c) for c in tried} and grid[start] in tried
        assert tried == list(grid[grid.index(tried[0]):grid.index(tried[-1]) + 1]) and len(tried) >= 3, (method, tried)
        assert table[method][str(chosen[method][key])] == max(table[method].values())
    assert report["quality"]["sigma_scales"]["mppca"] == chosen["mppca"]["patch_radius"]


def test_kinetics_part_reports_curve_errors_per_lesion_and_the_headline(multiframe):
    report, out = multiframe
    kinetics = report["kinetics"]
    assert len(kinetics["lesions"]) == 1 and kinetics["n_lesions_total"] >= 1
    lesion = kinetics["lesions"][0]
    assert set(lesion["methods"]) == {"noisy", "tv", "bm4d", "mppca", "tpca", "nordic", "unet"}
    assert lesion["export_max_abs_diff"] < 1e-3  # native grid: the generator's exported curve, recomputed
    assert max(lesion["truth"]) > 0.2  # an enhancing lesion
    for method, entry in lesion["methods"].items():
        assert len(entry["curve"]) == len(lesion["truth"]) and math.isfinite(entry["rmse"]), method
        assert report["headline"]["methods"][method]["peak_enhancement_error"] == pytest.approx(
            abs(entry["peak_error"]))
    png = (out / "benchmark_kinetics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Kinetics" in (out / "benchmark.md").read_text()


def test_kinetics_errors_against_a_known_curve():
    from breastmri.evaluate.benchmark_kinetics import (
        curve_errors,
        enhancement_curve,
        initial_slope,
    )

    times = np.array([0.0, 15.0, 75.0, 90.0, 105.0])  # 2 pre-contrast frames, then a 60 s gap
    truth_re = np.array([0.0, 0.0, 1.0, 1.5, 1.2])
    frames = np.zeros((5, 8, 8), np.float32)
    mask = np.zeros((8, 8), bool)
    mask[2:5, 3:6] = True
    frames[:, mask] = (200.0 * (1 + truth_re))[:, None]
    frames[:, ~mask] = 7.0  # outside the mask: ignored
    np.testing.assert_allclose(enhancement_curve(frames, mask, 2), truth_re, atol=1e-12)
    # S0 is the mean of the pre-contrast frames: 90 and 110 -> S0 = 100
    frames[0, mask], frames[1, mask] = 90.0, 110.0
    frames[2:, mask] = np.array([200.0, 240.0, 220.0])[:, None]
    np.testing.assert_allclose(enhancement_curve(frames, mask, 2), [-0.1, 0.1, 1.0, 1.4, 1.2], atol=1e-12)
    assert initial_slope(truth_re, times, 2) == pytest.approx(1.0)  # +1.0 over 60 s: 1 per minute
    errors = curve_errors([-0.1, 0.1, 1.0, 1.4, 1.2], truth_re, times, 2)
    assert errors["rmse"] == pytest.approx(math.sqrt((0.01 + 0.01 + 0 + 0.01 + 0) / 5))
    assert errors["peak"] == pytest.approx(1.4) and errors["peak_truth"] == pytest.approx(1.5)
    assert errors["peak_error"] == pytest.approx(-0.1 / 1.5)
    assert errors["slope_per_min"] == pytest.approx(0.9) and errors["slope_error"] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="empty"):
        enhancement_curve(frames, np.zeros((8, 8), bool), 2)


def test_multiframe_methods_fall_back_to_2d_without_a_time_axis(smoke_data):
    from breastmri.data.manifest import read_manifest

    row = dict(read_manifest(smoke_data, "test")[0], n_times=1)  # as a series with one time point reads
    stacks = benchmark_quality.Stacks(smoke_data)
    noisy = stacks.frames(row)
    levels = benchmark_quality.noise_levels(row, noisy)
    for method in ("bm4d", "mppca", "tpca"):
        (main, _, amplitude), ms, fallback = stacks.denoise(method, row, levels)
        assert fallback.startswith(benchmark_quality.FALLBACK_2D) and main.shape == noisy.shape and ms > 0
        np.testing.assert_allclose(amplitude, benchmark_quality.classical_denoise("bm3d", noisy, levels)[2], atol=1e-5)


def test_lesions_are_found_by_sop_instance_uid_without_preprocessing_them(smoke_data, smoke_dicom):
    from breastmri.data.manifest import read_manifest
    from breastmri.evaluate.benchmark_kinetics import find_lesions

    lesions, note = find_lesions(smoke_data, None)
    assert note is None and lesions
    uids = {r["series_uid"] for r in read_manifest(smoke_data)}
    for lesion in lesions:
        assert lesion["series_uid"] in uids and lesion["mask"].any()
        inside = np.zeros_like(lesion["mask"])
        inside[lesion["window"]] = True
        assert not (lesion["mask"] & ~inside).any()  # the multi-frame methods' window holds the whole ROI
        assert [r["time_index"] for r in lesion["rows"]] == list(range(len(lesion["times_s"])))
        assert {r["position_index"] for r in lesion["rows"]} == {lesion["position_index"]}
    assert not any(name.startswith("lesion") for name in read_manifest(smoke_data)[0])  # not in the manifest


def test_mppca_slabs_score_a_position_as_the_whole_series_would(smoke_data):
    """Stacks runs mppca on the slab of positions a scored slice depends on (merged with planned neighbours):
    the scored slice must equal the whole-volume run's, whichever slab served it."""
    from breastmri.data.manifest import read_manifest
    from breastmri.restore.denoisers import denoise_frames

    rows = [r for r in read_manifest(smoke_data, "test") if r["time_index"] == 1]
    uid = rows[0]["series_uid"]
    rows = sorted((r for r in rows if r["series_uid"] == uid), key=lambda r: r["position_index"])
    stacks = benchmark_quality.Stacks(smoke_data)
    whole = stacks.frames(stacks.rows_of(rows[0], whole_series=True))            # (T, Z, H, W)
    levels = benchmark_quality.noise_levels(rows[0], whole[1, 0])
    expected = denoise_frames("mppca", whole - levels["zero"], rician=False, patch_radius=2,
                              register=benchmark_quality.REGISTER)
    expected = benchmark_quality.rician_outputs(expected, levels)[0]
    n = len(rows)
    alone = stacks.denoise("mppca", rows[0], levels)[0][0]                      # its own slab, 3 of n positions
    assert stacks.slab(rows[0], n) == (0, 3) and n > 3
    np.testing.assert_allclose(alone, expected[1, 0], rtol=1e-5, atol=1e-6)
    planned = benchmark_quality.Stacks(smoke_data)
    planned.plan([rows[0], rows[-1]])
    assert planned.slab(rows[-1], n) == (0, n)                                  # overlapping slabs merge
    for row in (rows[0], rows[-1]):
        np.testing.assert_allclose(planned.denoise("mppca", row, levels)[0][0],
                                   expected[1, row["position_index"]], rtol=1e-5, atol=1e-6)


def test_multiframe_methods_on_a_window_give_the_whole_slices_output_there(smoke_data):
    """The kinetics check runs the multi-frame methods on a lesion's window (benchmark_kinetics.KINETICS_MARGIN):
    mppca's and tpca's output away from the window's edges is the whole slice's; bm4d's differs by a fraction of
    the noise (some matches reach farther) and not on average (what an ROI mean sees). The window is a quarter of
    the slice, as a lesion's is of a demo slice."""
    from breastmri.data.manifest import read_manifest

    row = next(r for r in read_manifest(smoke_data, "test") if r["time_index"] == 2)
    stacks = benchmark_quality.Stacks(smoke_data)
    levels = benchmark_quality.noise_levels(row, stacks.frames(row))
    window, inner = (slice(14, 46), slice(20, 52)), (slice(8, -8), slice(8, -8))
    for method in ("mppca", "tpca", "bm4d"):
        whole = stacks.denoise(method, row, levels)[0][2][window]
        part = stacks.denoise(method, row, levels, window)[0][2]
        assert part.shape == whole.shape
        assert not np.allclose(whole, stacks.frames(row)[window], atol=1e-3)  # it denoised
        if method != "bm4d":
            np.testing.assert_allclose(part[inner], whole[inner], atol=1e-5, err_msg=method)
        else:
            difference = part[inner] - whole[inner]
            assert np.sqrt(np.mean(difference ** 2)) < 0.3 * levels["sigma_pixel"]
            assert abs(difference.mean()) < 0.02 * levels["sigma_pixel"]


def test_voxelwise_tofts_fit_recovers_known_parameters_and_fails_on_a_flattened_curve():
    """RE curves made by the generator's own extended Tofts model (RE = 0.5 x concentration): the fit gives back
    0.5 Ktrans and 0.5 ve; frames whose enhancement is averaged over time (what a careless temporal denoiser
    does) miss them by far."""
    from breastmri.evaluate.benchmark_kinetics import map_errors, tofts_maps
    from breastmri.simulate.protocol import parker_aif, tissue_concentration

    times = np.arange(25) * 16.4
    aif = {"dose": 1.2, "width": 0.9, "washout": 1.1}
    ktrans, ve = np.array([0.1, 0.3, 0.8]), np.array([0.2, 0.4, 0.3])
    concentration = tissue_concentration(times, lambda t: parker_aif(t, 55.0, **aif), ktrans, ve, np.full(3, 0.05))
    fitted_k, fitted_ve = tofts_maps(0.5 * concentration, times, 55.0, aif)
    np.testing.assert_allclose(fitted_k, 0.5 * ktrans, rtol=0.1)   # kep on a table of 64: a few % off
    np.testing.assert_allclose(fitted_ve, 0.5 * ve, rtol=0.1)
    truth = (1 + 0.5 * concentration.astype(np.float64))[:, :, None] * np.ones((1, 1, 2))   # (T, 3, 2) frames
    mask = np.ones((3, 2), bool)
    assert map_errors(truth, truth, mask, times, 4, 55.0, aif)["ktrans_error"] == 0
    flat = truth.copy()
    flat[4:] = flat[4:].mean(0)
    assert map_errors(flat, truth, mask, times, 4, 55.0, aif)["ktrans_error"] > 0.2


def test_real_part_scores_what_a_user_tree_allows_and_says_what_it_cannot(smoke_run, tmp_path):
    """A dynamic with a file missing from one frame is scored at the longest run of neighbouring positions that have
    every frame; one whose
    scored positions hold no signal is reported as not scored; a tree without a dynamic says so. None stops the
    run."""
    from dicom_fixtures import write_mr_series

    from breastmri.evaluate.benchmark_real import markdown, real_part
    from breastmri.evaluate.benchmark_runs import read_run

    write_mr_series(tmp_path / "tree" / "gap", "PG", n_slices=4, rows=24, cols=24, time_points=8)
    (tmp_path / "tree" / "gap" / "IM0003.dcm").unlink()  # files are named in reverse: a frame of the last time point
    # modality values all below zero (an intercept far below the stored values): no body above the air's level
    write_mr_series(tmp_path / "tree" / "dark", "PD", n_slices=3, rows=24, cols=24, time_points=8, slope=1.0,
                    intercept=-5000.0)
    real = real_part(tmp_path / "tree", read_run(smoke_run), ["noisy", "tpca"], positions=3, log=lambda m: None)
    by_patient = {d["patient_id"]: d for d in real["dynamics"]}
    gap = by_patient["PG"]
    assert gap["positions"] == [2, 3] and gap["positions_left_out"] == [0, 1]  # IM0003: the last frame of slice 1
    assert len(gap["against_3t"]["frames"]) == 8
    assert by_patient["PD"]["skipped"] == "no signal above the air at a scored position"
    text = markdown(real)
    assert "### PG" in text and "Not scored: no signal above the air" in text
    write_mr_series(tmp_path / "short" / "s", "PS", n_slices=2, rows=24, cols=24, time_points=5)
    short = real_part(tmp_path / "short", read_run(smoke_run), ["noisy"], positions=1, log=lambda m: None)
    assert not short["dynamics"] and "No dynamic of at least 8 time points" in markdown(short)


def test_the_real_part_names_patients_the_run_trained_on_and_a_missing_held_back_table(identity_run, tmp_path):
    """Scoring a run on real frames of a patient in its own training or validation split is no test: the report
    says so (the run's split.json). A dynamic with too few frames before contrast for the held-back table says why
    it has none, where the table was silently missing."""
    import pydicom
    from dicom_fixtures import write_mr_series

    from breastmri.evaluate.benchmark_real import markdown, real_part
    from breastmri.evaluate.benchmark_runs import read_run

    run = tmp_path / "run"
    shutil.copytree(identity_run, run)
    (run / "split.json").write_text(json.dumps({"patients": {"train": ["P1"], "val": [], "test": ["P9"]}}))
    write_mr_series(tmp_path / "real", "P1", n_slices=3, rows=32, cols=32, time_points=8)
    messages = []
    real = real_part(tmp_path / "real", read_run(run), ["noisy"], positions=1, log=messages.append)
    assert real["seen_in_training"] == ["P1"] and any("no independent test" in m for m in messages)
    text = markdown(real)
    assert "took part in this run's training" in text and "No table against held-back frames" in text
    # a fine-tune of that run (train.init_from) on other patients learned from P1 too
    tuned = tmp_path / "tuned"
    shutil.copytree(run, tuned)
    cfg = load_config(tuned / "config.yaml")
    cfg["train"]["init_from"] = str(run)
    save_config(cfg, tuned / "config.yaml")
    (tuned / "split.json").write_text(json.dumps({"patients": {"train": ["P7"], "val": ["P8"], "test": ["P9"]}}))
    assert real_part(tmp_path / "real", read_run(tuned), ["noisy"], positions=1,
                     log=messages.append)["seen_in_training"] == ["P1"]
    # a tree of 1.5T scans only: nothing a 3T pair can be made of, said in the report, not a traceback
    write_mr_series(tmp_path / "real15", "P2", n_slices=3, rows=32, cols=32, time_points=8)
    for path in (tmp_path / "real15").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.MagneticFieldStrength = 1.5
        ds.save_as(path, enforce_file_format=True)
    real = real_part(tmp_path / "real15", read_run(run), ["noisy"], positions=1, log=messages.append)
    assert not real["dynamics"] and "degrade.source_field_t" in real["error"]
    assert "Nothing to score" in markdown(real)
