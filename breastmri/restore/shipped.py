"""The shipped default model: models/default/, a run trained at the full budget (configs/full.yaml), kept in git.

    make default-model                                   # the documented command: cohort, training, this copy
    python -m breastmri.restore.shipped runs/full --data data/processed_cohort   # only the copy: runs/full -> models/default/

enhance.py uses it when --model is not given; `make demo` starts from it (configs/demo.yaml's train.init_from) and
fine-tunes on the demo's training patients, so runs/demo is a model that has had a real budget. A run dir is
shipped whole but for what can be rebuilt: model.keras, config.yaml (its complete config: the normalization and
inputs enhance.py reproduces), split.json (the patients it was trained and selected on), history.csv (its
learning curve) and training.json (how it was made: the command, the commit, the data's summary, the
selection). A shipped model must stay under MAX_BYTES.
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from breastmri.restore.predict import EnhanceError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "models" / "default"
MAX_BYTES = 5 * 2 ** 20
SHIPPED_FILES = ("model.keras", "config.yaml", "split.json", "history.csv")


def resolve_model(path):
    """(model.keras, config.yaml) from a run dir or a model file; EnhanceError when either is missing."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise EnhanceError(f"--model {path} does not exist; give a run dir of main.py or its model.keras")
    config_file = path.parent / "config.yaml"
    if not config_file.is_file():
        raise EnhanceError(f"{config_file} does not exist; the model's config (written by main.py next to "
                           f"model.keras) decides its normalization and input size")
    return path, config_file


def ship(run_dir, data_dir, out_dir=DEFAULT_MODEL, command="make default-model"):
    """Copy a run's SHIPPED_FILES into out_dir (replaced as a whole, atomically) with training.json beside them;
    `command`: how the run was made, as the record should say it."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    missing = [f for f in SHIPPED_FILES if not (run_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} lacks {', '.join(missing)}: ship a finished run of main.py")
    size = (run_dir / "model.keras").stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"{run_dir / 'model.keras'} has {size / 2 ** 20:.1f} MB; a shipped model stays under "
                         f"{MAX_BYTES / 2 ** 20:.0f} MB (narrow it: model.filters)")
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    summary = Path(data_dir) / "summary.json"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    record = {"command": command, "run_dir": str(run_dir), "commit": commit or None,
              "train": metrics.get("train"),
              "data": {k: v for k, v in json.loads(summary.read_text()).items()
                       if k in ("dicom_root", "slices", "patients", "patients_per_split", "config")}
              if summary.is_file() else None}
    staging = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in SHIPPED_FILES:
        shutil.copy2(run_dir / name, staging / name)
    (staging / "training.json").write_text(json.dumps(record, indent=1))
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def main(argv=None):
    p = argparse.ArgumentParser(description="copy a trained run into models/default (the shipped model)")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True, help="the run's preprocessed data (its summary.json is recorded)")
    p.add_argument("--out", default=str(DEFAULT_MODEL))
    p.add_argument("--command", default="make default-model", help="how the run was made, for training.json")
    args = p.parse_args(argv)
    print(f"shipped: {ship(args.run_dir, args.data, args.out, args.command)}")


if __name__ == "__main__":
    sys.exit(main())
