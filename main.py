"""Train a restoration model on the pairs preprocessing.py wrote, then evaluate it honestly.

    python main.py --epochs 10                              # default residual U-Net on data/processed
    python main.py --config configs/thesis.yaml             # the 2021 thesis, reproduced
    python main.py --run-dir runs/unet --eval-only          # evaluate a trained model again
    python main.py --run-dir runs/unet --resume --epochs 20 # continue an interrupted (or finished) run

A run dir receives: config.yaml (resolved), model.keras (best validation loss), history.csv,
logs/ (TensorBoard), backup/ (state for --resume), loss_curve.png, reconstructions.png,
metrics_per_slice.csv and metrics.json. Every model metric is reported next to the same metric
for the degraded input, over the whole image and over the body mask, on the validation patients.
"""

import argparse
import csv
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from config import ConfigError, config_hash, load_config, save_config
from preprocessing import check_patient_split


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML file with the settings that differ from config.DEFAULTS")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set model.name=thesis_autoencoder (repeatable)")
    p.add_argument("--epochs", type=int, help="overrides train.epochs")
    p.add_argument("--data", default="data/processed", help="output dir of preprocessing.py")
    p.add_argument("--run-dir", help="where the run is written (default runs/<model name>)")
    p.add_argument("--eval-only", action="store_true", help="evaluate the run's model.keras, no training")
    p.add_argument("--resume", action="store_true", help="continue from the run's last saved epoch")
    return p.parse_args(argv)


def resolve_config(args):
    """Config file (or, when resuming/evaluating without one, the run's own config.yaml) + overrides."""
    overrides = list(args.set)
    if args.epochs is not None:
        overrides.append({"train": {"epochs": args.epochs}})
    path = args.config
    if path is None and (args.resume or args.eval_only) and args.run_dir:
        saved = Path(args.run_dir) / "config.yaml"
        path = saved if saved.is_file() else None
    return load_config(path, overrides)


# -----------------------------------------------------------------------------
# devices: must run before TensorFlow creates its first tensor

def setup_devices(train_cfg):
    """Pick the tf.distribute strategy and precision policy from the config and what TF sees.

    auto: one device -> default strategy; more than one GPU -> MirroredStrategy over all of them.
    mirrored: MirroredStrategy even on one device, over GPUs or, without GPUs, over `cpu_devices`
    logical CPUs (that is how the multi-device path is tested on a laptop).
    """
    import keras
    import tensorflow as tf

    n_cpu = int(train_cfg["cpu_devices"])
    if n_cpu > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n_cpu)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)

    if train_cfg["mixed_precision"]:
        if gpus:
            keras.mixed_precision.set_global_policy("mixed_float16")
        else:
            print("mixed_precision: no GPU visible, training in float32")

    mode = train_cfg["distribute"]
    if mode not in ("auto", "mirrored", "none"):
        raise ConfigError(f"train.distribute must be auto, mirrored or none, not {mode!r}")
    kind = "GPU" if gpus else "CPU"
    devices = [d.name for d in tf.config.list_logical_devices(kind)]
    if mode == "mirrored" or (mode == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    else:
        strategy = tf.distribute.get_strategy()
    print(f"devices: {', '.join(devices)} | strategy: {type(strategy).__name__} "
          f"({strategy.num_replicas_in_sync} replica(s)) | precision: {keras.mixed_precision.global_policy().name}")
    return strategy


# -----------------------------------------------------------------------------
# losses and training metrics (registered so model.keras reloads with them)

def get_loss(name):
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="mri_enhance")
    def mse_mae(y_true, y_pred):
        """The thesis' loss: mean squared error plus mean absolute error, equally weighted."""
        err = y_true - y_pred
        return ops.mean(ops.square(err), axis=-1) + ops.mean(ops.abs(err), axis=-1)

    losses = {"mse": "mean_squared_error", "mae": "mean_absolute_error", "mse+mae": mse_mae}
    if name not in losses:
        raise ConfigError(f"train.loss must be one of {', '.join(losses)}, not {name!r}")
    return losses[name]


def psnr_metric():
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="mri_enhance")
    def psnr(y_true, y_pred):
        """Per-image PSNR on the normalized scale (data_range 1), averaged over the batch."""
        mse = ops.mean(ops.square(ops.cast(y_true, "float32") - ops.cast(y_pred, "float32")), axis=(1, 2, 3))
        return ops.mean(10.0 * ops.log(1.0 / ops.maximum(mse, 1e-12)) / math.log(10.0))

    return psnr


# -----------------------------------------------------------------------------
# data

def load_splits(cfg, data_dir):
    """Training (crops, shuffled, augmented as configured) and validation (whole slices) datasets."""
    from data_factory import PairedSlices

    t = cfg["train"]
    common = dict(batch_size=t["batch_size"], seed=cfg["seed"])
    train = PairedSlices(data_dir, "train", shuffle=True, augment=t["augment"], patch_size=t["patch_size"],
                         steps_per_epoch=t["steps_per_epoch"], workers=t["workers"],
                         use_multiprocessing=t["use_multiprocessing"], **common)
    val = PairedSlices(data_dir, "val", max_slices=t["max_val_slices"], **common)
    # preprocessing refused to write a leaking split; the manifest may have been edited since, so check again:
    # one patient on both sides would inflate every validation number
    check_patient_split(train.rows + val.rows)
    print(f"data: {len(train.rows)} training slices from {len({r['patient_id'] for r in train.rows})} patients, "
          f"{len(val.rows)} validation slices from {len({r['patient_id'] for r in val.rows})} patients")
    return train, val


# -----------------------------------------------------------------------------
# training

def train(cfg, data_dir, run_dir, resume=False):
    import keras

    from model import get_model

    strategy = setup_devices(cfg["train"])
    keras.utils.set_random_seed(cfg["seed"])
    train_ds, val_ds = load_splits(cfg, data_dir)

    run_dir.mkdir(parents=True, exist_ok=True)
    backup_dir, history_csv = run_dir / "backup", run_dir / "history.csv"
    if resume and not backup_dir.exists():
        print(f"--resume: no saved state in {backup_dir}, starting from epoch 1")
        resume = False
    if not resume:
        shutil.rmtree(backup_dir, ignore_errors=True)
        history_csv.unlink(missing_ok=True)
    save_config(cfg, run_dir / "config.yaml")

    t = cfg["train"]
    with strategy.scope():
        model = get_model(cfg)
        model.compile(optimizer=keras.optimizers.Adam(t["learning_rate"]), loss=get_loss(t["loss"]),
                      metrics=[psnr_metric()])
    model.summary()

    best_so_far = None
    if resume and history_csv.exists():
        with open(history_csv) as f:
            best_so_far = min((float(r["val_loss"]) for r in csv.DictReader(f)), default=None)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(str(run_dir / "model.keras"), monitor="val_loss", save_best_only=True,
                                        initial_value_threshold=best_so_far),
        keras.callbacks.CSVLogger(str(history_csv), append=resume),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False, profile_batch=0),
        keras.callbacks.TerminateOnNaN(),
    ]
    start = time.perf_counter()
    # the dataset shuffles itself (seeded per epoch); fit's own shuffling would only add noise to that
    history = model.fit(train_ds, validation_data=val_ds, epochs=t["epochs"], shuffle=False,
                        callbacks=callbacks, verbose=2)
    seconds = time.perf_counter() - start

    losses = history.history.get("loss", [])
    if losses and not all(math.isfinite(v) for v in losses + history.history.get("val_loss", [])):
        raise FloatingPointError(
            f"training stopped: the loss became {losses[-1]} (not finite) at epoch {len(losses)}. "
            f"Lower train.learning_rate (now {t['learning_rate']}) or check the data for NaN/inf values.")
    images = len(train_ds) * t["batch_size"] * len(losses)
    # wall time of fit(), per-epoch validation included; benchmark.py measures training steps alone
    return {"seconds": round(seconds, 1), "epochs_run": len(losses),
            "images_per_s_with_validation": round(images / seconds, 1) if seconds > 0 and losses else None}


# -----------------------------------------------------------------------------
# evaluation

def evaluate(model, dataset, n_examples=3):
    """Metrics of the model output and of the degraded input, per validation slice.

    Returns (rows, examples): one dict per slice (manifest identity + metrics.pair_metrics) and, for up
    to `n_examples` patients, the slice with the most tissue (arrays for reconstructions.png).
    """
    from metrics import body_mask, pair_metrics

    rows, best = [], {}
    for b in range(len(dataset)):
        noisy, clean = dataset[b]
        pred = np.asarray(model.predict_on_batch(noisy), dtype=np.float32)
        for j, meta in enumerate(dataset.batch_rows(b)):
            n, c, p = noisy[j, ..., 0], clean[j, ..., 0], pred[j, ..., 0]
            mask = body_mask(c)
            m = pair_metrics(p, n, c, mask)
            rows.append({"patient_id": meta["patient_id"], "series_uid": meta["series_uid"],
                         "slice_index": meta["slice_index"], **m})
            pid, tissue = meta["patient_id"], int(mask.sum())
            if (pid in best or len(best) < n_examples) and tissue > best.get(pid, {}).get("tissue", -1):
                best[pid] = {"tissue": tissue, "noisy": n.copy(), "clean": c.copy(), "pred": p.copy(),
                             "title": f"{pid} slice {meta['slice_index']}",
                             "noisy_metrics": {"psnr": m["noisy_psnr"], "ssim": m["noisy_ssim"]},
                             "pred_metrics": {"psnr": m["model_psnr"], "ssim": m["model_ssim"]}}
    return rows, list(best.values())


def load_model(model_path):
    """A model.keras written by train(), without its optimizer (compile=False). The custom loss and metric of
    this module are registered first; enhance.py, benchmark.py and the notebook load models through here."""
    import keras

    get_loss("mse+mae"), psnr_metric()
    return keras.models.load_model(model_path, compile=False)


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def evaluate_run(cfg, data_dir, run_dir, extra=None):
    import figures
    from data_factory import PairedSlices
    from metrics import format_table, json_safe, summarize

    model_path = run_dir / "model.keras"
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} does not exist; train first (python main.py --run-dir {run_dir})")
    model = load_model(model_path)
    val = PairedSlices(data_dir, "val", batch_size=cfg["train"]["batch_size"],
                       max_slices=cfg["train"]["max_val_slices"], seed=cfg["seed"])

    start = time.perf_counter()
    rows, examples = evaluate(model, val)
    seconds = time.perf_counter() - start
    write_csv(rows, run_dir / "metrics_per_slice.csv")
    summary = summarize(rows)
    summary.update({"model_name": cfg["model"]["name"], "data_dir": str(data_dir),
                    "config_hash": config_hash(cfg), "eval_seconds": round(seconds, 1),
                    "eval_ms_per_slice": round(1000 * seconds / len(rows), 1), **(extra or {})})
    (run_dir / "metrics.json").write_text(json.dumps(json_safe(summary), indent=2))

    if (run_dir / "history.csv").exists():
        figures.plot_loss_curve(run_dir / "history.csv", run_dir / "loss_curve.png",
                                title=f"{cfg['model']['name']}: loss (MSE+MAE)" if cfg["train"]["loss"] == "mse+mae"
                                else f"{cfg['model']['name']}: loss")
    figures.plot_reconstructions(examples, run_dir / "reconstructions.png")
    print()
    print(format_table(summary))
    print(f"\nwrote {run_dir}/: metrics.json, metrics_per_slice.csv, reconstructions.png, loss_curve.png")
    return summary


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    run_dir = Path(args.run_dir or f"runs/{cfg['model']['name']}")
    data_dir = Path(args.data)
    if not (data_dir / "manifest.csv").is_file():
        sys.exit(f"error: {data_dir}/manifest.csv not found; run `python preprocessing.py --out {data_dir}` first")

    extra = None
    if not args.eval_only:
        try:
            extra = {"train": train(cfg, data_dir, run_dir, resume=args.resume)}
        except FloatingPointError as e:
            sys.exit(f"error: {e}")
    else:
        setup_devices(cfg["train"])
        previous = run_dir / "metrics.json"
        if previous.is_file() and "train" in json.loads(previous.read_text()):
            extra = {"train": json.loads(previous.read_text())["train"]}  # keep the training figures
    return evaluate_run(cfg, data_dir, run_dir, extra)


if __name__ == "__main__":
    main()
