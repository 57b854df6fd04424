"""main.py end to end on the smoke pipeline: artifacts, metrics, resume, multi-device, failure modes."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import main
from breastmri.config import ConfigError, load_config
from breastmri.data import splits
from breastmri.evaluate import evaluation
from breastmri.restore import losses, training

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def history_epochs(run_dir):
    with open(run_dir / "history.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_smoke_run_writes_every_artifact(smoke_run):
    for name in ["config.yaml", "split.json", "model.keras", "history.csv", "loss_curve.png", "reconstructions.png",
                 "metrics_per_slice.csv", "metrics.json"]:
        assert (smoke_run / name).stat().st_size > 0, name
    assert (smoke_run / "logs").is_dir() and (smoke_run / "backup").is_dir()
    assert load_config(smoke_run / "config.yaml") == load_config(SMOKE)


def test_metrics_json_reports_test_split_against_3t_and_truth(smoke_run, smoke_data):
    m = json.loads((smoke_run / "metrics.json").read_text())
    assert m["data_range"] == 1.0 and m["split"] == "test"
    for summary in (m, m["truth"], m["val"], m["val"]["truth"]):
        for block in (summary["model"], summary["noisy_input"], summary["masked"]["model"],
                      summary["masked"]["noisy_input"]):
            for key in ("mse", "rmse", "psnr", "ssim"):
                assert np.isfinite(block[key]["mean"]), key
    assert m["model"]["rmse"]["mean"] <= np.sqrt(m["model"]["mse"]["mean"]) + 1e-9  # mean of roots <= root of mean
    with open(smoke_data / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    test = [r for r in rows if r["split"] == "test"]
    assert m["n_slices"] == m["truth"]["n_slices"] == len(test)
    assert set(m["per_patient"]) == {r["patient_id"] for r in test} == set(m["patients"]["test"])
    assert m["val"]["n_slices"] == sum(r["split"] == "val" for r in rows)
    assert not set(m["patients"]["test"]) & (set(m["patients"]["train"]) | set(m["patients"]["val"]))
    # the truth has no noise of its own: the degraded input is further from it than from the 3T image's
    # expected value, and the 3T-referenced and truth-referenced numbers differ
    assert m["truth"]["noisy_input"]["psnr"]["mean"] != m["noisy_input"]["psnr"]["mean"]
    with open(smoke_run / "metrics_per_slice.csv") as f:
        assert len(list(csv.DictReader(f))) == len(test)


def test_checkpoint_is_selected_on_body_psnr_of_val(smoke_run):
    with open(smoke_run / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert all(float(r["val_body_psnr"]) > 0 for r in history)
    m = json.loads((smoke_run / "metrics.json").read_text())
    assert m["train"]["selection"]["monitor"] == "val_body_psnr" and m["train"]["selection"]["split"] == "val"
    record = json.loads((smoke_run / "split.json").read_text())
    assert record["patients"] == m["patients"] and len(record["manifest_sha256"]) == 64


def test_eval_only_refuses_data_with_another_split(smoke_run, smoke_data, tmp_path):
    data = tmp_path / "resplit"
    shutil.copytree(smoke_data, data)
    manifest = (data / "manifest.csv").read_text()
    test_patient = json.loads((smoke_run / "split.json").read_text())["patients"]["test"][0]
    lines = [line.replace(",test,", ",train,") if line.startswith(test_patient) else line
             for line in manifest.splitlines()]
    (data / "manifest.csv").write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    result = run_cli("--run-dir", str(run_dir), "--data", str(data), "--eval-only")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "splits its patients differently" in result.stderr and "test" in result.stderr


def test_unknown_config_key_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(bad)
    with pytest.raises(SystemExit) as end:  # a usage error, as preprocessing.py and model.py end one: status 2
        main.main(["--config", str(bad)])
    assert end.value.code == 2 and "train.epoch" in capsys.readouterr().err
    import model

    with pytest.raises(SystemExit) as end:
        model.main(["--config", str(bad)])
    assert end.value.code == 2 and "train.epoch" in capsys.readouterr().err


def test_epochs_flag_overrides_config():
    args = main.parse_args(["--config", SMOKE, "--epochs", "7"])
    assert main.resolve_config(args)["train"]["epochs"] == 7


def test_leaking_split_is_refused():
    with pytest.raises(ValueError, match="more than one split"):
        splits.check_patient_split([{"patient_id": "A", "split": "train"}, {"patient_id": "B", "split": "train"},
                                  {"patient_id": "B", "split": "val"}])


def test_resume_continues_from_saved_epoch(smoke_run, smoke_data, tmp_path):
    run_dir = tmp_path / "resumed"
    shutil.copytree(smoke_run, run_dir)
    assert history_epochs(run_dir) == [0]
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    for folder in (run_dir, run_dir / "backup"):  # what a run killed while saving left
        (folder / f".tmp-{ended.pid}-latest.weights.h5").write_bytes(b"half")
    main.main(["--run-dir", str(run_dir), "--data", str(smoke_data), "--resume", "--epochs", "2"])
    assert history_epochs(run_dir) == [0, 1]  # epoch 0 was not trained again
    assert (run_dir / "model.keras").is_file()
    assert not list(run_dir.glob(".tmp-*")) and not list((run_dir / "backup").glob(".tmp-*"))  # swept, renamed
    assert json.loads((run_dir / "backup" / "training_metadata.json").read_text())["epoch"] == 2


def test_eval_only_without_data_evaluates_on_the_data_the_run_recorded(smoke_run, smoke_data, tmp_path, capsys):
    """`main.py --run-dir RUN --eval-only` looked for data/processed and told the user to make it; a run knows its
    data (metrics.json's data_dir), and takes it when --data is not given."""
    run_dir = tmp_path / "again"
    shutil.copytree(smoke_run, run_dir)
    before = json.loads((run_dir / "metrics.json").read_text())
    main.main(["--run-dir", str(run_dir), "--eval-only"])
    after = json.loads((run_dir / "metrics.json").read_text())
    assert "the run's metrics.json" in capsys.readouterr().out
    assert Path(after["data_dir"]).resolve() == Path(smoke_data).resolve() and after["model"] == before["model"]


def test_a_resume_records_the_kept_epoch_of_the_whole_run_and_keeps_its_settings(smoke_run, smoke_data, tmp_path,
                                                                                  capsys):
    """best_epoch names the epoch model.keras holds among every epoch of the run (history.csv), also after a resume
    that ran none; a resume or an evaluation that would change what the model is refuses before writing."""
    run_dir = tmp_path / "resumed"
    shutil.copytree(smoke_run, run_dir)
    first = json.loads((run_dir / "metrics.json").read_text())["train"]["selection"]["best_epoch"]
    main.main(["--run-dir", str(run_dir), "--data", str(smoke_data), "--resume", "--epochs", "2"])
    with open(run_dir / "history.csv") as f:
        values = [float(r["val_body_psnr"]) for r in csv.DictReader(f)]
    selection = json.loads((run_dir / "metrics.json").read_text())["train"]["selection"]
    assert selection["best_epoch"] == 1 + int(np.argmax(values)) and selection["epochs_in_history"] == 2
    main.main(["--run-dir", str(run_dir), "--data", str(smoke_data), "--resume"])  # nothing left to run
    again = json.loads((run_dir / "metrics.json").read_text())["train"]["selection"]
    assert again["best_epoch"] == selection["best_epoch"] and again["best_value"] == selection["best_value"]
    assert first == 1
    config = (run_dir / "config.yaml").read_text()
    for flag in ("--resume", "--eval-only"):
        with pytest.raises(SystemExit) as end:
            main.main(["--run-dir", str(run_dir), "--data", str(smoke_data), flag, "--set", "model.filters=16"])
        assert end.value.code == 2 and re.search("model.filters|model differs", capsys.readouterr().err)
    assert (run_dir / "config.yaml").read_text() == config


def test_an_error_while_writing_leaves_the_old_file_and_no_temporary_one(tmp_path):
    from breastmri.files import atomic_path, write_text_atomic

    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and list(tmp_path.iterdir()) == [path]


def test_sweep_stale_removes_only_what_killed_runs_left(tmp_path):
    from breastmri.files import _started, sweep_stale, temporary_name

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # a process id that no longer runs
    (tmp_path / f".tmp-{ended.pid}-model.keras").write_text("half")
    (tmp_path / f".tmp-{ended.pid}-series").mkdir()
    (tmp_path / f".tmp-{ended.pid}-series" / "IM1.dcm").write_text("half")
    (tmp_path / f".tmp-9{2 ** 64}-huge").write_text("?")  # an id os.kill cannot take: kept
    # this process' id on a name it did not give out: an earlier process with the same id (in a container every
    # run is process 1)
    (tmp_path / f".tmp-{os.getpid()}-before").write_text("half")
    # a live process' id (this one's parent) with another start time: a killed run whose id is now another's
    parent, started = os.getppid(), _started(os.getppid())
    (tmp_path / f".tmp-{parent}@{started + 1}-reused").write_text("half")
    kept = {temporary_name("mine"), ".tmp-1-another-run", "model.keras",  # this process', a live one's, a result
            f".tmp-{parent}@{started}-running",  # the live process itself
            f".tmp-enhance-{ended.pid}-series", ".tmp-noid", f".tmp-9{2 ** 64}-huge"}  # not this prefix's names
    for name in kept - {f".tmp-9{2 ** 64}-huge"}:
        (tmp_path / name).write_text("x")
    assert sweep_stale(tmp_path) == 4
    assert {p.name for p in tmp_path.iterdir()} == kept


def test_a_backup_killed_while_saving_leaves_the_previous_epochs_and_resumes(tmp_path, monkeypatch):
    import keras

    from breastmri.restore.training import atomic_backup

    def model():
        m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        m.compile(optimizer="sgd", loss="mse")
        return m

    backup, x = tmp_path / "backup", np.ones((4, 2), np.float32)
    first = model()
    first.fit(x, x[:, :1], epochs=1, verbose=0, callbacks=[atomic_backup(backup)])
    weights, record = backup / "latest.weights.h5", backup / "training_metadata.json"  # keras' names, kept
    saved = weights.read_bytes()
    assert json.loads(record.read_text())["epoch"] == 1

    def killed(filepath, overwrite=True):  # the save writes half a file, then the run dies
        Path(filepath).write_bytes(b"half")
        raise KeyboardInterrupt

    callback = atomic_backup(backup)
    callback.set_model(first)
    callback._current_epoch = 2
    monkeypatch.setattr(first, "save_weights", killed)
    with pytest.raises(KeyboardInterrupt):
        callback._save_model()
    assert weights.read_bytes() == saved and json.loads(record.read_text())["epoch"] == 1
    assert sorted(p.name for p in backup.iterdir()) == ["latest.weights.h5", "training_metadata.json"]
    resumed = model().fit(x, x[:, :1], epochs=3, verbose=0, callbacks=[atomic_backup(backup)])
    assert resumed.epoch == [1, 2]  # epoch 0's backup was read: only the two after it were trained
    assert json.loads(record.read_text())["epoch"] == 3


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


def test_truth_metrics_equal_3t_metrics_when_the_truth_is_the_3t_image(smoke_run, smoke_data, tmp_path):
    from breastmri.data.paired import PairedSlices

    data = tmp_path / "truth_is_3t"
    shutil.copytree(smoke_data, data)
    for truth in (data / "arrays").glob("*_truth.npy"):
        shutil.copy(truth.with_name(truth.name.replace("_truth", "_clean")), truth)
    from breastmri.restore.networks import context_offsets

    model = losses.load_model(smoke_run / "model.keras")
    context = context_offsets(load_config(smoke_run / "config.yaml"))
    summary = evaluation.summarize_both(evaluation.evaluate(model, PairedSlices(data, "test", batch_size=4, context=context),
                                                4)[0])
    for key in ("model", "noisy_input", "masked", "patient_ci"):
        assert summary["truth"][key] == summary[key], key
    # and on the real truth they differ: the comparison above can fail
    real = evaluation.summarize_both(evaluation.evaluate(model, PairedSlices(smoke_data, "test", batch_size=4, context=context),
                                             4)[0])
    assert real["truth"]["model"] != real["model"]


def test_cosine_schedule_trains_and_a_bad_schedule_is_named(smoke_data, tmp_path):
    cfg = load_config(ROOT / "configs" / "smoke.yaml", ["train.lr_schedule=cosine", "train.steps_per_epoch=2"])
    result = training.train(cfg, smoke_data, tmp_path / "run")
    assert result["epochs_run"] == 1 and (tmp_path / "run" / "model.keras").is_file()
    with pytest.raises(ConfigError, match="lr_schedule"):
        training.train(load_config(ROOT / "configs" / "smoke.yaml", ["train.lr_schedule=step"]), smoke_data,
                   tmp_path / "bad")


def test_the_checkpoint_never_takes_a_file_an_interrupted_save_left(tmp_path):
    import keras

    from breastmri.files import temporary_path
    from breastmri.restore.training import atomic_checkpoint

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    final = tmp_path / "model.keras"
    model.save(final)
    temporary_path(final).write_bytes(b"half a model")  # an earlier save of this process, killed midway
    x = np.zeros((4, 2), np.float32)
    # an epoch that does not beat the best so far saves nothing: the good model stays, the half one goes
    model.fit(x, x[:, :1], epochs=1, verbose=0,
              callbacks=[atomic_checkpoint(final, monitor="loss", mode="min", initial_value_threshold=-1.0)])
    keras.models.load_model(final)
    assert not temporary_path(final).exists()
    # an epoch that does: saved under the temporary name, then renamed into place
    before = final.stat().st_mtime_ns
    model.fit(x, x[:, :1], epochs=1, verbose=0, callbacks=[atomic_checkpoint(final, monitor="loss", mode="min")])
    assert final.stat().st_mtime_ns != before and not temporary_path(final).exists()
    keras.models.load_model(final)


@pytest.mark.parametrize("script", ["main.py", "enhance.py", "benchmark.py"])
def test_commands_start_quietly(script):
    """TensorFlow's start-up lines (oneDNN, CUDA stubs, `failed call to cuInit`) stay off the terminal unless
    --verbose: main.py imported TensorFlow before silencing it, so every call, --help included, printed them."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0
    assert not [line for line in done.stderr.splitlines() if "cuInit" in line or "oneDNN" in line], done.stderr


def test_eval_only_of_a_run_that_is_not_there_says_so(smoke_data, tmp_path):
    """A mistyped --run-dir with --eval-only warned about split records, then ended in a FileNotFoundError
    traceback: one line now, exit status 2."""
    result = run_cli("--run-dir", str(tmp_path / "no_such_run"), "--data", str(smoke_data), "--eval-only")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "model.keras not found" in result.stderr and "Traceback" not in result.stderr
