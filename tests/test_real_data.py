"""Real scanner files (../shared/realdata, beside the repository; its README gives sources, licences and
citations): a Siemens DCE stored one series per time point and Philips ASL source series. Skipped with the reason
printed when the folder is not there (a user's clone)."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from breastmri.config import load_config
from breastmri.data import preprocess
from breastmri.data.manifest import read_manifest
from breastmri.dicom.dynamics import assemble_dynamics, describe_dynamic
from breastmri.dicom.index import index
from breastmri.dicom.kinds import KIND_REASONS
from breastmri.dicom.pixels import read_series
from breastmri.enhance import pipeline
from breastmri.simulate.noise import body_of, frames_before_contrast, measure_noise, neighbour_correlation

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata"
PROSTATEX, ASL = REAL / "prostatex-0218", REAL / "philips-asl-3t"
pytestmark = pytest.mark.skipif(not PROSTATEX.is_dir() or not ASL.is_dir(),
                                reason=f"real scanner files not found at {REAL} (../shared/realdata)")
TWIST_SERIES = list(range(27, 97))  # Twist_dynamic_Wip576_TT=8.0s .. TT=298.9s


@pytest.fixture(scope="module")
def prostatex():
    series, skips, files_seen = index(PROSTATEX)
    assembled = assemble_dynamics(series)
    dynamics = [describe_dynamic(s) for s in assembled if s.dynamic]
    return series, skips, assembled, dynamics


def _twist(assembled):
    return next(s for s in assembled if s.dynamic and s.dynamic["time_points"] == 70)


def test_the_70_twist_series_are_one_dynamic_and_the_flip_angle_set_is_not(prostatex):
    series, skips, assembled, dynamics = prostatex
    assert [d["series_numbers"] for d in dynamics] == [TWIST_SERIES]
    (twist,) = dynamics
    assert twist["time_points"] == 70 and twist["ordered_by"] == "AcquisitionTime"
    vibe = [s for s in assembled if "vibe" in s.series_description]
    assert len(vibe) == 4 and all(s.dynamic is None and len(s.frames) == 10 for s in vibe)  # 2, 5, 10, 20 degrees
    dce = _twist(assembled)
    assert len(dce.frames) == 700 and {k for _, k in dce.layout} == set(range(10))
    # the localizers (two "t2localizer" series of three planes, one "localizer" image, ImageType M\ND) by name
    assert skips.files["localizer"] == 27 and not any(s.series_description.endswith("localizer") for s in series)
    # the 12-direction diffusion series is stored as Siemens mosaics: 3 images of 520 x 640, each a volume's tiles
    assert skips.files[KIND_REASONS["mosaic"]] == 3
    assert "ep2d-advdiff-MDDW-12dir_spair_511b" not in {s.series_description for s in series}
    # the 4-b-value diffusion series is four series of one time point, one per b-value, not a dynamic of 4
    diffusion = [s for s in assembled if s.series_description == "ep2d-advdiff-3Scan-4bval_spair_511b"]
    assert [s.volume for s in diffusion] == ["b=0", "b=100", "b=400", "b=800"]
    assert all(len(s.frames) == 10 and {t for t, _ in s.layout} == {0} and s.dynamic is None for s in diffusion)


def test_preprocessing_records_the_dynamic(tmp_path):
    cfg = load_config(overrides=["preprocess.series_filter=Twist|vibe"])
    summary = preprocess.run(PROSTATEX, tmp_path, cfg, progress=False)
    (dynamic,) = summary["dynamics"]
    assert dynamic["series_numbers"] == TWIST_SERIES and dynamic["ordered_by"] == "AcquisitionTime"
    rows = [r for r in read_manifest(tmp_path) if r["dynamic_id"]]
    assert len(rows) == 700 and {r["n_times"] for r in rows} == {70} and {r["time_index"] for r in rows} == set(range(70))
    assert len({r["source_series_uid"] for r in rows}) == 70 and {r["series_uid"] for r in rows} == {dynamic["id"]}
    # the simulated noise takes the spectrum of the scanner's: neighbour correlations within 0.1
    info = json.loads((tmp_path / rows[0]["noisy_file"].replace("_noisy.npy", ".json")).read_text())["info"]
    assert info["noise_spectrum_from"] == "frame differences", info["noise_spectrum_from"]
    assert info["noise_correlation_added"] == pytest.approx(info["noise_correlation_source"], abs=0.1)
    clean = np.load(tmp_path / rows[0]["clean_file"])
    added = np.load(tmp_path / rows[0]["noisy_file"]) - clean
    body = clean > 0.1 * np.percentile(clean, 99)
    assert neighbour_correlation(added, body) == pytest.approx(info["noise_correlation_source"], abs=0.1)


def test_enhance_writes_70_series_that_saw_70_time_points(smoke_run, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for folder in PROSTATEX.iterdir():
        if "Twist" in folder.name:
            shutil.copytree(folder, source / folder.name)  # the index does not follow folder links
    summary = pipeline.run(smoke_run, source, tmp_path / "out", progress=False)
    assert summary["series_done"] == 70, summary["series_skipped"]
    assert {r["time_points"] for r in summary["series"]} == {70} and len({r["dynamic"] for r in summary["series"]}) == 1


def test_twist_noise_matches_its_own_frame_differences(prostatex):
    dce = _twist(prostatex[2])
    frames = read_series(dce)
    noise = measure_noise(frames, dce.layout)
    # the frame-difference measurement as defined for the real-data statistics: MAD of (frame 1 - frame 0) / sqrt(2)
    # inside the body (the mean frame above 10% of its 99th percentile), no registration
    first, second = frames[:10].astype(np.float64), frames[10:20].astype(np.float64)
    mean = (first + second) / 2
    body = mean > 0.1 * np.percentile(mean, 99)
    diff = (second - first)[body] / math.sqrt(2)
    measured = 1.4826 * np.median(np.abs(diff - np.median(diff)))
    assert noise["sigma"] == pytest.approx(measured, rel=0.3), noise


def _positions(series, frames, positions):
    """(T, P, H, W) of a series' frames at the given slice positions."""
    at = {tk: i for i, tk in enumerate(series.layout)}
    times = sorted({t for t, _ in series.layout})
    return frames[np.array([[at[(t, k)] for k in positions] for t in times])].astype(np.float64)


def test_contrast_arrival_is_read_where_the_enhancing_pixels_rise(prostatex):
    """The TWIST dynamic's body mean stays within 3% of frame 0 for 30 frames (what the benchmark once took for the
    frames before contrast), while its most-enhancing pixels pass a tenth of their rise at frame 10; the pCASL
    control images, repeated acquisitions, have no contrast at all."""
    dce = _twist(prostatex[2])
    frames = _positions(dce, read_series(dce), [4, 5, 6])
    body = body_of(frames.mean(axis=0))
    level = np.array([frame[body].mean() for frame in frames])
    assert np.all(np.abs(level[:30] / level[0] - 1) < 0.03)
    assert frames_before_contrast(frames, body) == 10
    control = next(s for s in index(ASL)[0] if s.volume == "control" and "3D" not in s.series_description)
    assert frames_before_contrast(_positions(control, read_series(control), [3, 4, 5])) == 30


def test_an_air_fit_on_dark_tissue_gives_way_to_the_frame_differences(prostatex):
    """Air is a few percent of this pelvis: with its values dithered (as a rescale slope leaves them) the air fit
    settled on dark tissue and read the noise some ten times too high. Such a fit misses the chi law by more than
    KS_TOLERANCE and is refused; the frame differences decide."""
    dce = _twist(prostatex[2])
    frames = read_series(dce)[:120].astype(np.float32)  # 12 time points of 10 positions
    dithered = frames + np.random.default_rng(0).uniform(-0.5, 0.5, frames.shape).astype(np.float32)
    noise = measure_noise(dithered, dce.layout[:120])
    assert "background" not in noise["estimates"]
    assert noise["method"] == "frame_difference"
    assert noise["sigma"] == pytest.approx(noise["estimates"]["frame_difference"], rel=1e-5)


def test_philips_asl_source_series_split_into_label_and_control_images():
    """Each pCASL source series (a label and a control image at every position and time, told apart by Philips'
    Label Type) becomes two series of repeated acquisitions; the scanner's perfusion images (label minus control,
    PERFUSION) are parametric maps."""
    series, skips, _ = index(ASL)
    assert [(s.series_description, s.volume, len({t for t, _ in s.layout})) for s in series] == [
        ("SOURCE - pCASL", "control", 30), ("SOURCE - pCASL", "label", 30),
        ("SOURCE - 3D_pCASL_6mm", "control", 8), ("SOURCE - 3D_pCASL_6mm", "label", 8)]
    assert all(len(s.frames) == 8 * len({t for t, _ in s.layout}) for s in series)  # 8 positions at every time
    assert skips.files["parametric map"] == 16 and not skips.series


def test_the_pcasl_control_images_are_a_series_of_repeated_frames_with_a_masked_background(tmp_path):
    """Preprocessed, the 2-D pCASL's control images are one series of 30 time points whose noise is read from the
    frame differences (the air, masked to 0, reads about a third of it) and is spatially correlated."""
    cfg = load_config(overrides=["preprocess.split=[1.0,0.0,0.0]", "preprocess.series_filter=^SOURCE - pCASL$"])
    summary = preprocess.run(ASL, tmp_path, cfg, progress=False)
    assert summary["series_processed"] == 2
    rows = [r for r in read_manifest(tmp_path) if r["series_uid"].endswith("#control")]
    assert len(rows) == 240 and {r["n_times"] for r in rows} == {30}
    info = json.loads((tmp_path / rows[0]["noisy_file"].replace("_noisy.npy", ".json")).read_text())["info"]
    assert info["masked_background"] and info["sigma_method"] == "frame_difference"
    assert info["sigma_estimates"]["frame_difference"] > 3 * info["sigma_estimates"]["background"]
    assert min(info["noise_correlation_source"]) > 0.5
    assert np.allclose(info["noise_correlation_added"], info["noise_correlation_source"], atol=0.1)


def test_benchmark_scores_real_frames_one_by_one(smoke_run):
    from breastmri.evaluate.benchmark_real import markdown, real_part
    from breastmri.evaluate.benchmark_runs import read_run

    real = real_part(PROSTATEX, read_run(smoke_run), ["noisy", "tpca"], positions=1, series_filter="Twist",
                     log=lambda message: None)
    (dynamic,) = real["dynamics"]
    assert dynamic["time_points"] == 70 and len(dynamic["positions"]) == 1
    table = dynamic["against_3t"]
    assert table["frames"] == list(range(70)) and len(table["gain_db"]["tpca"]) == 70
    assert np.all(np.isfinite(table["input_psnr_db"])) and dynamic["ceiling_db"] > max(table["input_psnr_db"])
    assert dynamic["difference_correlation"] > -0.2  # TWIST shares k-space, so noise, between neighbouring frames
    summary = table["summary"]["tpca"]
    assert summary["worst_gain_db"] == min(table["gain_db"]["tpca"])
    assert summary["frames_worse"] == [f for f, g in zip(table["frames"], table["gain_db"]["tpca"]) if g < 0]
    if dynamic["pre_contrast_frames"] >= 3:  # the held-back reference: frames no method saw
        held = dynamic["against_held_back"]
        assert held["held_back_frames"] and not set(held["held_back_frames"]) & set(held["frames"])
    # the input and the projection change no anatomy alike in every frame, and keep the 3T mean's fine detail
    for method in ("noisy", "tpca"):
        detail = dynamic["detail"][method]
        assert detail["common_error"] < 0.2 and all(0.9 < k < 1.1 for k in detail["detail_kept"]), (method, detail)
    text = markdown(real)
    assert "Real data, frame by frame" in text and "| 69 |" in text and "| common error |" in text
    assert "neighbouring frames share more than noise" in text
    # seen in runs of 16-17 frames (with frames held back too): every frame still scored, each run projected alone
    runs = real_part(PROSTATEX, read_run(smoke_run), ["noisy", "tpca"], positions=1, series_filter="Twist",
                     log=lambda message: None, chunk=16)
    for key in ("against_3t", "against_held_back"):
        whole, cut = dynamic[key], runs["dynamics"][0][key]
        assert cut["frames"] == whole["frames"] and cut["input_psnr_db"] == whole["input_psnr_db"], key
        assert cut["gain_db"]["tpca"] != whole["gain_db"]["tpca"] and np.all(np.isfinite(cut["gain_db"]["tpca"]))
    assert "at least 16 consecutive" in markdown(runs)


def test_realism_statistics_of_the_twist_dynamic():
    from breastmri.evaluate.realism import dynamic_frames, statistics

    frames, times, _ = dynamic_frames(PROSTATEX)
    s = statistics(frames, times)
    assert s["time_points"] == 70 and s["spacing_s"] == pytest.approx(4.2, abs=0.1)
    assert min(s["noise_correlation"]) > 0.4  # a scanner's noise: correlated between neighbouring pixels
    assert s["largest_shift_px"] < 0.5 and s["snr"] > 10


def test_chunks_cover_every_frame_once_in_order_and_none_is_shorter_than_asked():
    from breastmri.evaluate.benchmark_real import chunks_of

    assert chunks_of(range(70), 0) == [list(range(70))]
    assert chunks_of(range(15), 8) == [list(range(15))]  # two runs would leave one of 7
    runs = chunks_of(range(70), 8)
    assert [f for run in runs for f in run] == list(range(70))
    assert len(runs) == 8 and min(map(len, runs)) == 8 and max(map(len, runs)) == 9
    assert [len(run) for run in chunks_of(range(5, 75), 35)] == [35, 35] and chunks_of(range(5, 75), 35)[1][0] == 40


def test_difference_correlation_tells_noise_shared_between_frames_from_independent_noise():
    from breastmri.evaluate.benchmark_real import SHARED_NOISE_CORRELATION, difference_correlation

    rng = np.random.default_rng(0)
    anatomy = rng.uniform(1, 2, (1, 1, 64, 64))
    body = np.ones((1, 64, 64), bool)
    independent = anatomy + 0.1 * rng.standard_normal((12, 1, 64, 64))
    assert abs(difference_correlation(independent, body) + 0.5) < 0.03
    white = 0.1 * rng.standard_normal((13, 1, 64, 64))
    shared = anatomy + (white[1:] + white[:-1]) / np.sqrt(2)  # each frame shares half its noise with the next
    assert difference_correlation(shared, body) > SHARED_NOISE_CORRELATION > difference_correlation(independent, body)
    assert difference_correlation(independent[:2], body) is None
    # a position without body, or frames that do not change there, leave the others to decide; none left: None
    two = np.concatenate([independent, np.ones_like(independent)], axis=1)
    assert difference_correlation(two, np.stack([body[0], np.zeros((64, 64), bool)])) == \
        difference_correlation(independent, body)
    assert difference_correlation(two, np.stack([np.zeros((64, 64), bool), body[0]])) is None


def test_a_real_only_benchmark_needs_no_phantom_data(smoke_run, tmp_path, monkeypatch):
    import benchmark

    run = tmp_path / "shipped"  # a run dir as models/default is: config.yaml and model.keras, no metrics.json
    run.mkdir()
    for name in ("config.yaml", "model.keras"):
        shutil.copy(Path(smoke_run) / name, run / name)
    monkeypatch.chdir(tmp_path)  # no data/processed here
    report = benchmark.main(["--run-dir", str(run), "--parts", "real", "--real-data", str(PROSTATEX),
                             "--real-filter", "Twist", "--real-methods", "noisy", "--real-positions", "1",
                             "--out", str(tmp_path / "out")])
    assert report["data"] is None and report["real"]["dynamics"][0]["time_points"] == 70
    text = (tmp_path / "out" / "benchmark.md").read_text()
    assert "real data only" in text and "Real data, frame by frame" in text
    assert not list((tmp_path / "out").glob(".tmp-*"))  # written through temporary names, none left
