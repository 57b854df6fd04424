"""Session fixtures: the real pipeline, end to end, at smoke size (configs/smoke.yaml).

demo DICOM tree (demo_data.py) -> pairs (preprocessing.py) -> one short training run (main.py).
Built once per test session in a temporary folder and shared by the tests of main.py, the notebook,
enhance.py and benchmark.py, so every one of them runs on real files written by the real code.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def smoke_cfg():
    from breastmri.config import load_config

    return load_config(ROOT / "configs" / "smoke.yaml")


@pytest.fixture(scope="session")
def smoke_dicom(tmp_path_factory, smoke_cfg):
    from breastmri.simulate.demo_tree import ensure_demo_tree

    d = smoke_cfg["demo"]
    out = tmp_path_factory.mktemp("smoke") / "dicom"
    return Path(ensure_demo_tree(out, patients=d["patients"], seed=d["seed"], slices=d["slices"],
                                 time_points=d["time_points"], matrix=d["matrix"]))


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory, smoke_cfg, smoke_dicom):
    from breastmri.data import preprocess

    out = tmp_path_factory.mktemp("smoke_processed")
    preprocess.run(smoke_dicom, out, smoke_cfg, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, smoke_data):
    import main

    run_dir = tmp_path_factory.mktemp("smoke_run")
    main.main(["--config", str(ROOT / "configs" / "smoke.yaml"), "--data", str(smoke_data),
               "--run-dir", str(run_dir)])
    return run_dir


@pytest.fixture(scope="session")
def identity_run(tmp_path_factory, smoke_cfg):
    """A run dir (config.yaml + model.keras) holding the untrained smoke-size single-frame U-Net: the identity
    function (its correction layer is zero-initialized and it starts from the frame; a projection context would
    start it from the projection), for tests of enhance.py's writing that must not depend on weights."""
    import copy

    from breastmri.config import save_config
    from breastmri.restore.networks import get_model

    cfg = copy.deepcopy(smoke_cfg)
    cfg["model"]["context"] = {"time": 0, "slices": 0, "precontrast_frames": 0, "projection": False}
    run_dir = tmp_path_factory.mktemp("identity_run")
    get_model(cfg).save(run_dir / "model.keras")
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


@pytest.fixture(scope="session")
def identity(identity_run):
    """identity_run's model loaded (enhancer.Enhancer): header conformance and the writing do not depend on the
    weights."""
    from breastmri.enhance.enhancer import load_enhancer

    return load_enhancer(identity_run)
