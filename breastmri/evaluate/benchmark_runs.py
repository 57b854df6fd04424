"""The run directories a benchmark compares: their record, model and training budget.

A run directory is what main.py writes (config.yaml, split.json, model.keras, metrics.json); the benchmark reads
one default run, optionally the thesis run beside it and self-supervised runs, and refuses to rank runs whose
training budgets differ without saying so.
"""

import json
from pathlib import Path

from breastmri.config import ConfigError, load_run_config
from breastmri.evaluate.benchmark_quality import BenchmarkError
from breastmri.restore import losses

# -----------------------------------------------------------------------------
# runs and models

def read_run(run_dir):
    """A main.py run dir as {"dir", "cfg", "metrics", "method"} (metrics: {} when there is no metrics.json; the
    shipped model's training.json gives its "train" block)."""
    run_dir = Path(run_dir)
    cfg_path, model_path = run_dir / "config.yaml", run_dir / "model.keras"
    for path in (cfg_path, model_path):
        if not path.is_file():
            raise BenchmarkError(f"{path} not found: give a run dir written by main.py (config.yaml + model.keras)")
    try:
        cfg = load_run_config(cfg_path)
    except ConfigError as e:
        raise BenchmarkError(f"{cfg_path}: {e}") from e
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if not metrics and (run_dir / "training.json").is_file():  # the shipped model: its training record instead
        metrics = {"train": json.loads((run_dir / "training.json").read_text()).get("train", {})}
    mode = cfg["train"]["mode"]
    method = "thesis" if cfg["model"]["name"] == "thesis_autoencoder" else "unet" if mode == "supervised" else mode
    return {"dir": run_dir, "cfg": cfg, "metrics": metrics, "method": method}


def find_thesis_run(run_dir, data_dir):
    """The newest sibling of run_dir that is a thesis_autoencoder run evaluated on data_dir, or None.

    "Evaluated on" = the data_dir main.py wrote into its metrics.json resolves to the same folder.
    """
    run_dir, data = Path(run_dir).resolve(), Path(data_dir).resolve()
    found = []
    for sibling in sorted(run_dir.parent.iterdir()):
        if sibling == run_dir or not (sibling / "model.keras").is_file():
            continue
        try:
            run = read_run(sibling)
        except (BenchmarkError, ValueError):
            continue
        recorded = run["metrics"].get("data_dir")
        if run["method"] == "thesis" and recorded and Path(recorded).resolve() == data:
            found.append(((sibling / "model.keras").stat().st_mtime, sibling))
    return max(found)[1] if found else None


def load_model(run):
    """The run's model.keras, loaded as main.py loads it."""

    return losses.load_model(run["dir"] / "model.keras")


def budget(run):
    """What the run was trained with, from its config.yaml and the "train" block of its metrics.json."""
    t, done = run["cfg"]["train"], run["metrics"].get("train", {})
    return {"run_dir": str(run["dir"]), "model": run["cfg"]["model"]["name"], "epochs": t["epochs"],
            "epochs_run": done.get("epochs_run"), "steps_per_epoch": t["steps_per_epoch"],
            "batch_size": t["batch_size"], "patch_size": t["patch_size"], "augment": t["augment"],
            "learning_rate": t["learning_rate"], "loss": t["loss"], "train_seconds": done.get("seconds"),
            "train_images_per_s_with_validation": done.get("images_per_s_with_validation"),
            "data_dir": run["metrics"].get("data_dir")}


def compare_budgets(budgets):
    """A note when the runs were not trained with the same epochs, steps per epoch and batch size."""
    keys = ("epochs", "steps_per_epoch", "batch_size")
    if len(budgets) < 2 or len({tuple(b[k] for k in keys) for b in budgets.values()}) == 1:
        return None
    return "training budgets differ: " + "; ".join(
        f"{m}: " + ", ".join(f"{k} {b[k]}" for k in keys) for m, b in budgets.items())
