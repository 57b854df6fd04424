"""main.py end to end on the smoke pipeline: artifacts, metrics, resume, multi-device, failure modes."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import main
from config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def history_epochs(run_dir):
    with open(run_dir / "history.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_smoke_run_writes_every_artifact(smoke_run):
    for name in ["config.yaml", "model.keras", "history.csv", "loss_curve.png", "reconstructions.png",
                 "metrics_per_slice.csv", "metrics.json"]:
        assert (smoke_run / name).stat().st_size > 0, name
    assert (smoke_run / "logs").is_dir() and (smoke_run / "backup").is_dir()
    assert load_config(smoke_run / "config.yaml") == load_config(SMOKE)


def test_metrics_json_reports_model_next_to_noisy_input(smoke_run, smoke_data):
    m = json.loads((smoke_run / "metrics.json").read_text())
    assert m["data_range"] == 1.0
    for block in (m["model"], m["noisy_input"], m["masked"]["model"], m["masked"]["noisy_input"]):
        for key in ("mse", "rmse", "psnr", "ssim"):
            assert np.isfinite(block[key]["mean"]), key
    assert m["model"]["rmse"]["mean"] <= np.sqrt(m["model"]["mse"]["mean"]) + 1e-9  # mean of roots <= root of mean
    with open(smoke_data / "manifest.csv") as f:
        val = [r for r in csv.DictReader(f) if r["split"] == "val"]
    assert m["n_slices"] == len(val)
    assert set(m["per_patient"]) == {r["patient_id"] for r in val}
    with open(smoke_run / "metrics_per_slice.csv") as f:
        assert len(list(csv.DictReader(f))) == len(val)


def test_unknown_config_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(bad)
    with pytest.raises(SystemExit, match="train.epoch"):
        main.main(["--config", str(bad)])


def test_epochs_flag_overrides_config():
    args = main.parse_args(["--config", SMOKE, "--epochs", "7"])
    assert main.resolve_config(args)["train"]["epochs"] == 7


def test_leaking_split_is_refused():
    with pytest.raises(ValueError, match="both train and val"):
        main.check_patient_split([{"patient_id": "A", "split": "train"}, {"patient_id": "B", "split": "train"},
                                  {"patient_id": "B", "split": "val"}])


def test_resume_continues_from_saved_epoch(smoke_run, smoke_data, tmp_path):
    run_dir = tmp_path / "resumed"
    shutil.copytree(smoke_run, run_dir)
    assert history_epochs(run_dir) == [0]
    main.main(["--run-dir", str(run_dir), "--data", str(smoke_data), "--resume", "--epochs", "2"])
    assert history_epochs(run_dir) == [0, 1]  # epoch 0 was not trained again


def test_eval_only_reevaluates_saved_model(smoke_run, smoke_data, tmp_path):
    run_dir = tmp_path / "eval"
    shutil.copytree(smoke_run, run_dir)
    (run_dir / "metrics.json").unlink()
    summary = main.main(["--run-dir", str(run_dir), "--data", str(smoke_data), "--eval-only"])
    before = json.loads((smoke_run / "metrics.json").read_text())
    assert summary["model"]["psnr"]["mean"] == pytest.approx(before["model"]["psnr"]["mean"], abs=1e-4)


def run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)


def test_mirrored_strategy_on_two_logical_cpus(smoke_data, tmp_path):
    result = run_cli("--config", SMOKE, "--data", str(smoke_data), "--run-dir", str(tmp_path / "mirrored"),
                     "--set", "train.distribute=mirrored", "--set", "train.cpu_devices=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MirroredStrategy (2 replica(s))" in result.stdout
    assert (tmp_path / "mirrored" / "model.keras").is_file()


def test_non_finite_loss_stops_with_clear_message(smoke_data, tmp_path):
    data = tmp_path / "poisoned"
    shutil.copytree(smoke_data, data)
    for path in (data / "arrays").glob("*_noisy.npy"):
        arr = np.load(path)
        arr[:] = np.nan
        np.save(path, arr)
    result = run_cli("--config", SMOKE, "--data", str(data), "--run-dir", str(tmp_path / "nan"))
    assert result.returncode != 0
    assert "not finite" in result.stderr


def test_missing_data_gives_clear_error(tmp_path):
    result = run_cli("--config", SMOKE, "--data", str(tmp_path / "nowhere"), "--run-dir", str(tmp_path / "r"))
    assert result.returncode != 0 and "preprocessing.py" in result.stderr
