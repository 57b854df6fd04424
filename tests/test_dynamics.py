"""Dynamics as scanners export them, and noise measured without air, on demo trees written for the purpose:
a DCE stored one series per time point (demo_data.py --split-dynamics) and one whose air is masked to 0
(--mask-background). The same on real scanner files: tests/test_real_data.py."""

import json

import numpy as np
import pytest

from breastmri.config import load_config
from breastmri.data import preprocess
from breastmri.data.manifest import read_manifest
from breastmri.data.paired import PairedSlices
from breastmri.dicom.dynamics import assemble_dynamics, describe_dynamic, protocol_name
from breastmri.dicom.index import index
from breastmri.enhance import pipeline
from breastmri.simulate.degrade import add_noise
from breastmri.simulate.demo_tree import make_demo_tree
from breastmri.simulate.noise import neighbour_correlation, spectrum_correlation, zero_filled_spectrum
from breastmri.simulate.protocol import ACQUIRED_FRACTION, KSPACE_TAPER

TREE = dict(patients=2, seed=3, slices=3, time_points=5, matrix=64)


def _preprocess(root, out, *overrides):
    cfg = load_config(overrides=["preprocess.split=[0.5,0.5,0.0]", *overrides])
    return preprocess.run(root, out, cfg, progress=False), read_manifest(out)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("dynamics")
    make_demo_tree(base / "whole", **TREE)
    make_demo_tree(base / "split", split_dynamics=True, **TREE)
    # still patients: a breathing breast changes between any two frames by more than its noise (motion.py)
    make_demo_tree(base / "masked", mask_background=True, **dict(TREE, motion_mm=0.0))
    make_demo_tree(base / "correlated", **dict(TREE, motion_mm=0.0, matrix=96))
    make_demo_tree(base / "white", kspace="full", **dict(TREE, motion_mm=0.0))
    return base


def test_split_dynamics_are_one_series_per_time_point_and_are_assembled(trees):
    series, skips, _ = index(trees / "split")
    dce = [s for s in series if "TT=" in s.series_description]
    assert len(dce) == 2 * 2 * 5 or len(dce) % 5 == 0  # every visit's DCE: one series per time point
    assert all(len({t for t, _ in s.layout}) == 1 for s in dce)
    assembled = assemble_dynamics(series)
    dynamics = [describe_dynamic(s) for s in assembled if s.dynamic]
    assert len(dynamics) == len(dce) // 5 and all(d["time_points"] == 5 for d in dynamics)
    assert all(d["ordered_by"] == "TriggerTime" for d in dynamics)
    for d in dynamics:  # the members are the series 801.. in time order, named by their time
        assert d["series_numbers"] == list(range(801, 806))
        assert len({protocol_name(s) for s in dce if s.series_uid in d["series_uids"]}) == 1
    assert assemble_dynamics(series, "off") == series


def test_assembled_dynamic_gives_the_arrays_of_the_same_dce_stored_whole(trees, tmp_path):
    whole_summary, whole = _preprocess(trees / "whole", tmp_path / "whole")
    split_summary, split = _preprocess(trees / "split", tmp_path / "split")
    assert len(split_summary["dynamics"]) == len([r for r in whole if r["slice_index"] == 0 and r["n_times"] == 5])
    key = lambda r: (r["patient_id"], r["study_uid"], r["time_index"], r["position_index"])  # noqa: E731
    whole_dce = {key(r): r for r in whole if r["n_times"] == 5}
    split_dce = {key(r): r for r in split if r["dynamic_id"]}
    assert whole_dce.keys() == split_dce.keys()
    for k, a in whole_dce.items():
        b = split_dce[k]
        assert b["n_times"] == 5 and b["series_uid"] == b["dynamic_id"] and b["source_series_uid"] != b["dynamic_id"]
        # in modality units: each series is normalized by its own degraded draw's percentiles
        clean_a, clean_b = (np.load(tmp_path / name / r["clean_file"], mmap_mode="r")[r["slice_index"]]
                            * (r["norm_hi"] - r["norm_lo"]) + r["norm_lo"] for name, r in (("whole", a), ("split", b)))
        np.testing.assert_allclose(clean_b, clean_a, rtol=1e-4, atol=1e-2)
        assert b["truth_file"]  # the members' noise-free truth is read too


def test_enhance_writes_one_derived_series_per_time_point_of_a_split_dynamic(trees, identity_run, tmp_path):
    summary = pipeline.run(identity_run, trees / "split", tmp_path / "out", progress=False)
    dce = [r for r in summary["series"] if "TT=" in r["series_description"]]
    assert dce and all(r["status"] == "done" and r["time_points"] == 5 and r["dynamic"] for r in dce)
    assert len({r["output_series_uid"] for r in dce}) == len(dce) == len({r["source_series_uid"] for r in dce})
    marker = json.loads((tmp_path / "out" / dce[0]["folder"] / pipeline.MARKER).read_text())
    assert marker["time_points"] == 5 and marker["source_series_uid"] == dce[0]["source_series_uid"]
    again = pipeline.run(identity_run, trees / "split", tmp_path / "out", progress=False)  # resumes: all exist
    assert again["series_done"] == 0 and again["series_skipped"].get("exists") == len(summary["series"])


def test_masked_background_noise_is_read_from_the_repeated_frames(trees, tmp_path):
    summary, rows = _preprocess(trees / "masked", tmp_path / "masked")
    record = json.loads((trees / "masked" / "demo_params.json").read_text())["summary"]["ground_truth"]
    visit_sigma = {v["study_uid"]: v["noise_sigma_modality"] for p in record for v in p["visits"]}
    dce = {r["series_uid"]: r for r in rows if r["n_times"] == 5}
    assert summary["series_with_masked_background"] >= len(dce)
    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "masked" / "arrays").glob("*.json")]
    for sidecar in sidecars:
        row = sidecar["rows"][0]
        if row["n_times"] != 5:
            continue
        assert sidecar["info"]["sigma_method"] == "frame_difference"
        sigma = row["sigma_source"] * (row["norm_hi"] - row["norm_lo"])  # modality units
        # the beating heart, its ghosts and the breathing chest change between any two frames too; on a 64 px grid
        # few blocks of the body are free of them (noise._quiet_blocks), so the estimate reads somewhat high
        assert 0.8 < sigma / visit_sigma[row["study_uid"]] < 1.6, sidecar["info"]
    # the same series with real air: the air of 8 channels' sum of squares fits the chi law of 16 degrees of freedom
    _, whole = _preprocess(trees / "whole", tmp_path / "whole")
    whole_sidecars = [json.loads(p.read_text()) for p in (tmp_path / "whole" / "arrays").glob("*.json")]
    assert {s["info"]["sigma_method"] for s in whole_sidecars if s["rows"][0]["n_times"] == 5} == {"background"}


def _added_noise_correlation(data_dir, row):
    """Neighbour correlation [rows, cols] of noisy - clean inside the body (high SNR: Rician ~ Gaussian there)."""
    clean = np.load(data_dir / row["clean_file"])
    added = np.load(data_dir / row["noisy_file"]) - clean
    return neighbour_correlation(added, clean > 0.2)


def test_added_noise_is_shaped_like_the_source_noise(trees, tmp_path):
    _, rows = _preprocess(trees / "correlated", tmp_path / "correlated")
    true = spectrum_correlation(zero_filled_spectrum(96, 96, ACQUIRED_FRACTION, KSPACE_TAPER))
    dce = [r for r in rows if r["n_times"] == 5 and r["slice_index"] == 0]
    assert dce
    for row in dce:
        info = json.loads((tmp_path / "correlated" / row["noisy_file"].replace("_noisy.npy", ".json")).read_text())[
            "info"]
        assert info["noise_spectrum_from"] == "frame differences"
        assert info["noise_correlation_source"] == pytest.approx(true, abs=0.1)  # measured: what was simulated
        assert info["noise_correlation_added"] == pytest.approx(info["noise_correlation_source"], abs=0.1)
        assert _added_noise_correlation(tmp_path / "correlated", row) == pytest.approx(
            info["noise_correlation_source"], abs=0.1)
    # fresh noise in training draws from the same shaped process
    ds = PairedSlices(tmp_path / "correlated", None, fresh_noise=True, patch_size=48)
    row = next(r for r in ds.rows if r["n_times"] == 5)
    spectrum = ds.noise_spectrum(row)
    assert spectrum is not None
    clean = np.load(tmp_path / "correlated" / row["clean_file"])[:, :48, :48]
    drawn = add_noise(clean, "field", 0.05, np.random.default_rng(0), zero=0.0, spectrum=spectrum) - clean
    assert neighbour_correlation(drawn, clean > 0.2) == pytest.approx(true, abs=0.1)


def test_white_source_noise_stays_white(trees, tmp_path):
    """A tree acquired on the full matrix (white noise): its frame differences are no spectrum."""
    _, rows = _preprocess(trees / "white", tmp_path / "white")
    for row in (r for r in rows if r["n_times"] == 5 and r["slice_index"] == 0):
        info = json.loads((tmp_path / "white" / row["noisy_file"].replace("_noisy.npy", ".json")).read_text())["info"]
        # no zero-filling: what little correlation the frame differences show is the heart's ghosts, weaker than
        # the zero-filled acquisition's
        assert max(info["noise_correlation_source"]) < 0.5
