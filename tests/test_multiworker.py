"""Training across workers (breastmri/restore/multiworker.py) and preprocessing across machines
(breastmri/data/shards.py), on loopback and the smoke tree."""

import json
from pathlib import Path

import numpy as np
import pytest

from breastmri.data import preprocess
from breastmri.data.manifest import read_manifest
from breastmri.data.shards import merge
from breastmri.restore.losses import load_model
from breastmri.restore.multiworker import launch, tf_config

ROOT = Path(__file__).resolve().parents[1]


def test_tf_config_names_the_worker():
    config = json.loads(tf_config(["127.0.0.1:1234", "127.0.0.1:1235"], 1))
    assert config == {"cluster": {"worker": ["127.0.0.1:1234", "127.0.0.1:1235"]},
                      "task": {"type": "worker", "index": 1}}
    with pytest.raises(ValueError):
        tf_config(["127.0.0.1:1234"], 1)
    with pytest.raises(ValueError):
        tf_config(["no-port"], 0)


def test_sharded_and_merged_preprocessing_is_one_run(smoke_dicom, smoke_cfg, tmp_path):
    whole = preprocess.run(smoke_dicom, tmp_path / "whole", smoke_cfg, progress=False)
    for i in range(2):
        preprocess.run(smoke_dicom, tmp_path / f"part{i}", smoke_cfg, progress=False, shard=(i, 2))
    parts = [tmp_path / f"part{i}" for i in range(2)]
    (parts[0] / "arrays" / ".tmp-1-x_noisy.npy").write_bytes(b"half")  # a killed shard's leftover: not merged
    merged = merge(parts, tmp_path / "merged")
    assert not list((tmp_path / "merged" / "arrays").glob(".tmp-*"))
    assert (tmp_path / "merged" / "manifest.csv").read_text() == (tmp_path / "whole" / "manifest.csv").read_text()
    assert merged["slices"] == whole["slices"] and merged["patients_per_split"] == whole["patients_per_split"]
    for row in read_manifest(tmp_path / "merged"):  # every array the manifest names is there, the same bytes
        for key in ("clean_file", "noisy_file"):
            assert (tmp_path / "merged" / row[key]).read_bytes() == (tmp_path / "whole" / row[key]).read_bytes()
    with pytest.raises(Exception, match="shares"):
        merge(parts[:1], tmp_path / "incomplete")


def test_two_workers_take_the_step_of_one_process_with_their_global_batch(smoke_data, tmp_path):
    """One step of two workers (each half of the global batch of 4) gives the weights of one process making the
    whole batch: the samples are the same (per-sample random streams) and the gradients are averaged."""
    common = ["--config", str(ROOT / "configs" / "smoke.yaml"), "--data", str(smoke_data),
              "--set", "train.steps_per_epoch=1", "--set", "train.epochs=1"]
    runs = {}
    for workers in (1, 2):
        run_dir = tmp_path / f"workers{workers}"
        codes = launch(workers, [*common, "--run-dir", str(run_dir)], timeout_s=300, log_dir=tmp_path / "logs")
        assert codes == [0] * workers, (codes, [p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*.log")])
        runs[workers] = run_dir
    metrics = json.loads((runs[2] / "metrics.json").read_text())
    assert metrics["train"]["distribute"] == {"strategy": "multi_worker_mirrored", "workers": 2, "replicas": 2,
                                              "global_batch": 4, "shard": "sample", "task": 0}
    assert sorted(p.name for p in (runs[2] / "backup").iterdir()) == ["worker-0", "worker-1"]
    one, two = (load_model(runs[w] / "model.keras").get_weights() for w in (1, 2))
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
