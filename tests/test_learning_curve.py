"""breastmri/studies/learning_curve.py on the smoke run: its curve from history.csv, the baselines scored on the same
validation slices, reused from an earlier study only when that scored the same slices."""

import json
import math

import pytest

from breastmri.config import load_run_config
from breastmri.data.manifest import read_manifest
from breastmri.studies import learning_curve


def test_the_curve_and_its_baselines_and_their_reuse(smoke_run, smoke_data, tmp_path):
    args = ["--run-dir", str(smoke_run), "--data", str(smoke_data)]
    learning_curve.main([*args, "--out", str(tmp_path / "first.png")])
    first = json.loads((smoke_run / "learning_curve.json").read_text())
    _, points = learning_curve.curve(smoke_run, smoke_data)
    assert first["steps"] == [s for s, _ in points] and len(first["val_truth_psnr"]) == len(points) >= 1
    assert set(first["baselines"]) == set(learning_curve.BASELINES)
    assert first["baselines"]["tpca"] > first["baselines"]["noisy"]  # the projection denoises the smoke frames
    kept = tmp_path / "kept.json"  # an earlier study of the same slices, its baselines told apart
    marked = {method: value + 100 for method, value in first["baselines"].items()}
    kept.write_text(json.dumps(dict(first, baselines=marked)))
    learning_curve.main([*args, "--baselines-from", str(kept), "--also", str(smoke_run),
                         "--out", str(tmp_path / "second.png")])
    assert json.loads((smoke_run / "learning_curve.json").read_text())["baselines"] == marked
    assert (tmp_path / "second.png").stat().st_size > 0
    other = 1 if first["max_val_slices"] is None else first["max_val_slices"] + 1  # other slices
    for changed in (dict(max_val_slices=other), dict(mppca_radius=2)):
        kept.write_text(json.dumps(dict(first, **changed)))
        with pytest.raises(SystemExit, match="score the baselines anew"):
            learning_curve.main([*args, "--baselines-from", str(kept)])


def test_the_real_panel_reads_each_runs_kept_step_and_gains(smoke_run, smoke_data, tmp_path):
    summary = {"against_3t": {"mean_gain_db": -0.25, "frames_worse": [3, 4]},
               "against_held_back": {"mean_gain_db": 0.5, "frames_worse": []}}
    bench = tmp_path / "benchmark.json"  # the shape benchmark.py --parts real writes (its first dynamic)
    bench.write_text(json.dumps({"real": {"dynamics": [{k: {"summary": {"unet": v}} for k, v in summary.items()}]}}))
    (row,) = learning_curve.real_gains([f"{smoke_run}={bench}"], smoke_data)
    best = json.loads((smoke_run / "metrics.json").read_text())["train"]["selection"]["best_epoch"]  # 1-based
    cfg = load_run_config(smoke_run / "config.yaml")
    n_train = len(read_manifest(smoke_data, "train"))  # an epoch of the smoke run is one pass
    steps = cfg["train"]["steps_per_epoch"] or math.ceil(n_train / cfg["train"]["batch_size"])
    assert row == (best * steps, -0.25, 0.5, 2)
    learning_curve.main(["--run-dir", str(smoke_run), "--data", str(smoke_data), "--out", str(tmp_path / "c.png"),
                         "--real", f"{smoke_run}={bench}"])
    assert json.loads((smoke_run / "learning_curve.json").read_text())["real"][0]["frames_worse"] == 2
