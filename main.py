"""Train a restoration model on the pairs preprocessing.py wrote, then evaluate it honestly.

    python main.py --epochs 10                              # default residual U-Net on data/processed
    python main.py --config configs/thesis.yaml             # the 2021 thesis, reproduced
    python main.py --run-dir runs/unet --eval-only          # evaluate a trained model again
    python main.py --run-dir runs/unet --resume --epochs 20 # continue an interrupted (or finished) run

A run dir receives: config.yaml (resolved), split.json (the patients of each split and the manifest's
hash), model.keras (the epoch with the best body-masked validation PSNR), history.csv, logs/
(TensorBoard), backup/ (state for --resume), loss_curve.png, reconstructions.png,
metrics_per_slice.csv and metrics.json.

Honest by construction: the checkpoint is selected on the validation patients and the numbers are
reported on the test patients, who took no part in training or selection (metrics.json says
"split": "test"; the validation figures sit under "val"). Every model metric is reported next to
the same metric for the degraded input, over the whole image and over the body mask, against the
3T image and, when the data has it (demo data), against the noise-free truth ("truth" section).
--eval-only and --resume refuse data whose split differs from the one the run recorded.
"""

import argparse
import csv
import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from config import ConfigError, config_hash, load_config, load_run_config, save_config
from splits import SPLITS, check_patient_split


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
        if saved.is_file():  # as the run was trained, keys added since included (config.ADDED_LATER)
            return load_config(overrides=[load_run_config(saved), *overrides])
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

# What checkpoint selection maximizes (see body_validation).
MONITOR = "val_body_psnr"


def training_mode(cfg):
    """cfg["train"]["mode"], checked: supervised | noise2noise | noise2void (data_factory.MODES)."""
    from data_factory import MODES

    mode = cfg["train"]["mode"]
    if mode not in MODES:
        raise ConfigError(f"train.mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode != "supervised" and cfg["preprocess"]["image_size"] is not None:
        raise ConfigError(f"train.mode {mode} needs preprocess.image_size null: resizing correlates the noise, and "
                          "both self-supervised modes rely on noise that is independent between pixels and frames")
    return mode


def selection(cfg):
    """(monitored log key, "max" | "min", what it is, its reference) of checkpoint selection for the run's
    train.mode and train.target.

    Supervised runs maximize the body PSNR against their training target (train.target: the 3T image, its
    projection or its decorrelation) on the validation patients. Self-supervised runs
    have no clean image (that is their point), so they minimize their own loss on the validation patients' noisy
    frames: for noise2noise it estimates the error against the clean image plus the noise variance (Lehtinen 2018),
    for noise2void the same at blind-spot pixels; either ranks checkpoints as the clean error would."""
    if training_mode(cfg) != "supervised":
        return ("val_loss", "min", f"{cfg['train']['mode']} loss on the noisy validation frames (no clean image "
                "used)", "none (noisy frames)")
    if cfg["train"]["target"] == "decorrelated":
        # its noise is independent of the input's, so the PSNR against it ranks checkpoints as the PSNR against
        # the noise-free image would (the noise only adds a constant to the expected squared error)
        return MONITOR, "max", "body PSNR against the decorrelated 3T target", "3T, noise decorrelated from the input"
    if cfg["train"]["target"] == "projected":
        return MONITOR, "max", "body PSNR against the 3T image's temporal projection", "3T, temporally projected"
    return MONITOR, "max", "body PSNR against the 3T image", "3T"


def needs_rician_correction(cfg, degrade_model):
    """True when a run's output estimates E[magnitude] and must have the Rician mean inverted: self-supervised
    modes on magnitude data (degrade model field or none; the thesis' gaussian noise has no Rician bias)."""
    return cfg["train"]["mode"] != "supervised" and degrade_model != "gaussian"


def get_loss(name, masked=False):
    """The training loss `name` (mse | mae | mse+mae). masked: the self-supervised form, whose y_true is (B, H, W, 2)
    (the noisy target, then a per-pixel weight; data_factory): the weighted mean over the pixels of each sample,
    so a noise2void batch is scored at its blind spots only."""
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
    if not masked:
        return losses[name]
    parts = {"mse": (ops.square,), "mae": (ops.abs,), "mse+mae": (ops.square, ops.abs)}[name]

    @keras.saving.register_keras_serializable(package="mri_enhance")
    def masked_loss(y_true, y_pred):
        """Weighted per-pixel loss against a noisy target: y_true[..., 0] values, y_true[..., 1] weights."""
        value, weight = y_true[..., :1], y_true[..., 1:2]
        err = value - ops.cast(y_pred, value.dtype)
        total = sum(ops.sum(weight * f(err), axis=(1, 2, 3)) for f in parts)
        return total / ops.maximum(ops.sum(weight, axis=(1, 2, 3)), 1.0)

    return masked_loss


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

class SplitMismatch(Exception):
    """The data's patient split differs from the one a run was trained and selected on."""


def split_record(data_dir):
    """{"patients": {split: sorted patient ids}, "manifest_sha256": ...} of a preprocessing output."""
    from data_factory import read_manifest

    rows = read_manifest(data_dir)
    check_patient_split(rows)  # one patient in two splits would inflate every held-out number
    patients = {name: sorted({r["patient_id"] for r in rows if r["split"] == name}) for name in SPLITS}
    digest = hashlib.sha256((Path(data_dir) / "manifest.csv").read_bytes()).hexdigest()
    return {"patients": patients, "manifest_sha256": digest}


def check_split_record(run_dir, data_dir):
    """Raise SplitMismatch when the run recorded another patient split than the data has now. A run without a
    record (older than split.json) is evaluated with a printed warning; another manifest hash with the same
    patients (arrays rebuilt, e.g. another dtype) only prints a note."""
    path = Path(run_dir) / "split.json"
    current = split_record(data_dir)
    if not path.is_file():
        print(f"warning: {path} does not exist (a run from before split records); cannot check that "
              f"{data_dir} holds the patients this model was trained and selected on")
        return current
    recorded = json.loads(path.read_text())
    changed = [name for name in SPLITS if recorded["patients"].get(name, []) != current["patients"][name]]
    if changed:
        details = "; ".join(
            f"{name}: recorded {len(recorded['patients'].get(name, []))} patients, data has "
            f"{len(current['patients'][name])}" for name in changed)
        raise SplitMismatch(f"{data_dir} splits its patients differently from the data {run_dir} was trained and "
                            f"selected on ({details}). Scoring it would mix training or selection patients into "
                            "the held-out numbers; preprocess with the run's config (same seed and "
                            "preprocess.split), or train a new run on this data.")
    if recorded.get("manifest_sha256") != current["manifest_sha256"]:
        print(f"note: {data_dir}/manifest.csv changed since training (same patients in every split)")
    return current


def load_splits(cfg, data_dir):
    """Training (crops, shuffled, augmented as configured) and validation (whole slices) datasets."""
    from data_factory import TARGETS, PairedSlices, read_manifest
    from model import context_offsets

    t = cfg["train"]
    if t["target"] not in TARGETS:
        raise ConfigError(f"train.target must be one of {', '.join(TARGETS)}, not {t['target']!r}")
    present = {r["split"] for r in read_manifest(data_dir)}
    for name in ("train", "val"):
        if name not in present:
            raise ValueError(f"{data_dir} has no {name} patients (preprocess.split {cfg['preprocess']['split']}); "
                             "training needs both: a checkpoint selected without validation patients would be "
                             "selected on the patients it is scored on. Add patients or change preprocess.split.")
    mode = training_mode(cfg)
    common = dict(batch_size=t["batch_size"], seed=cfg["seed"], context=context_offsets(cfg), mode=mode,
                  noise2noise_frames=t["noise2noise_frames"], register=t["noise2noise_register"],
                  mask_fraction=t["mask_fraction"],
                  target=t["target"] if mode == "supervised" else "3t")  # a self-supervised target is its mode's
    train_args = dict(shuffle=True, augment=t["augment"], patch_size=t["patch_size"],
                      steps_per_epoch=t["steps_per_epoch"], workers=t["workers"],
                      use_multiprocessing=t["use_multiprocessing"], **common)
    fresh = t["fresh_noise"]
    if fresh not in ("auto", True, False):
        raise ConfigError(f"train.fresh_noise must be auto, true or false, not {fresh!r}")
    if mode != "supervised":  # the noisy images are the data; a fresh draw needs the clean ones
        if fresh is True:
            raise ConfigError(f"train.fresh_noise true needs clean images; train.mode {mode} reads the noisy ones")
        fresh = False
    summary = Path(data_dir) / "summary.json"
    recorded = json.loads(summary.read_text()).get("config", {}) if summary.is_file() else {}
    model = (recorded.get("degrade") or {}).get("model")
    if model and model != cfg["degrade"]["model"]:
        # the run's config.yaml records the degradation of the data it was trained on: enhance.py decides by it
        # whether a self-supervised output gets the Rician correction, as evaluation decides by the manifest
        print(f"note: {data_dir} was degraded with degrade.model {model}; recorded in the run's config")
        cfg["degrade"]["model"] = model
    scale = (recorded.get("degrade") or {}).get("resolution_scale")
    if scale is not None and float(scale) < 1:  # a k-space crop cannot be redrawn on a crop of the clean image
        if fresh is True:
            raise ConfigError(f"train.fresh_noise true needs degrade.resolution_scale 1, the data has {scale}")
        fresh = False
    try:
        train = PairedSlices(data_dir, "train", fresh_noise=bool(fresh), **train_args)
    except ValueError as e:
        if fresh != "auto" or "fresh_noise" not in str(e):
            raise
        train = PairedSlices(data_dir, "train", fresh_noise=False, **train_args)
    val = PairedSlices(data_dir, "val", max_slices=t["max_val_slices"], **common)
    targets = {"supervised": "fresh noise every sample" if train.fresh_noise else "stored noisy images",
               "noise2noise": f"noise2noise: noisy frame pairs among the first {t['noise2noise_frames']} time points"
                              + (", targets registered to their inputs" if t["noise2noise_register"] else ""),
               "noise2void": f"noise2void: {t['mask_fraction']:.1%} blind-spot pixels"}[mode]
    print(f"data: {len(train.rows)} training slices from {len({r['patient_id'] for r in train.rows})} patients "
          f"({targets}), "
          f"{len(val.rows)} validation slices from {len({r['patient_id'] for r in val.rows})} patients "
          "(checkpoint selection)")
    return train, val


def body_validation(dataset, loss_name, multiple, mode="supervised"):
    """Keras callback that validates at the end of every epoch: val_loss (the training loss over whole slices),
    val_psnr and val_body_psnr, the mean per-slice PSNR inside the body mask against the training target (the 3T
    image, or its projection or decorrelation: train.target, selection()).

    Checkpoint selection monitors val_body_psnr: a loss over whole slices is dominated by air, which every model
    gets right, so it can prefer an epoch that is worse where the anatomy is. The 3T image is the reference's
    source because it is what real data offers (the truth exists only for demo data). It must come first in the
    callback list: it writes into the `logs` dict that ModelCheckpoint, CSVLogger and History read after it.
    """
    import keras

    class BodyValidation(keras.callbacks.Callback):
        masks = {}  # body mask of each validation slice, computed once

        def on_epoch_end(self, epoch, logs=None):
            if mode == "supervised":
                logs.update(validate(self.model, dataset, loss_name, multiple, self.masks))
            else:
                logs.update(validate_selfsup(self.model, dataset, loss_name, multiple))

    return BodyValidation()


def pixel_loss(err, loss_name):
    """The training loss per pixel of an error array, in numpy (what get_loss averages): validation scores with it."""
    return {"mse": err ** 2, "mae": np.abs(err), "mse+mae": err ** 2 + np.abs(err)}[loss_name]


def validate(model, dataset, loss_name, multiple, masks=None):
    """{"val_loss", "val_psnr", "val_body_psnr"} of `model` on a whole-slice dataset, predicted as enhance.py
    does (padded to `multiple`, model.size_multiple). masks: caches the body mask of each slice between calls."""
    from enhance import predict_padded
    from metrics import DATA_RANGE, body_mask

    masks = {} if masks is None else masks
    losses, psnr, body = [], [], []
    for b in range(len(dataset)):
        noisy, clean = dataset[b]
        pred = predict_padded(model, noisy, multiple, len(noisy))[..., None]
        err = (pred - clean)[..., 0].astype(np.float64)
        for j in range(len(err)):
            e = err[j]
            losses.append(float(np.mean(pixel_loss(e, loss_name))))
            psnr.append(10 * math.log10(DATA_RANGE ** 2 / max(np.mean(e ** 2), 1e-12)))
            key = (b, j)
            if key not in masks:
                masks[key] = body_mask(clean[j, ..., 0])
            if masks[key].any():
                body.append(10 * math.log10(DATA_RANGE ** 2 / max(np.mean(e[masks[key]] ** 2), 1e-12)))
    return {"val_loss": float(np.mean(losses)), "val_psnr": float(np.mean(psnr)),
            "val_body_psnr": float(np.mean(body)) if body else float(np.mean(psnr))}


def validate_selfsup(model, dataset, loss_name, multiple):
    """{"val_loss"}: the self-supervised loss of `model` on a whole-slice dataset of the same mode (its pairs and
    blind spots are drawn once, from the dataset's seed, so every epoch is scored on the same ones)."""
    from enhance import predict_padded

    total, weight = 0.0, 0.0
    for b in range(len(dataset)):
        inputs, target = dataset[b]
        pred = predict_padded(model, inputs, multiple, len(inputs)).astype(np.float64)
        err, w = target[..., 0] - pred, target[..., 1]
        total, weight = total + float(np.sum(w * pixel_loss(err, loss_name))), weight + float(np.sum(w))
    return {"val_loss": total / max(weight, 1.0)}


# -----------------------------------------------------------------------------
# training

def train(cfg, data_dir, run_dir, resume=False):
    import keras

    from model import get_model, size_multiple

    strategy = setup_devices(cfg["train"])
    keras.utils.set_random_seed(cfg["seed"])
    train_ds, val_ds = load_splits(cfg, data_dir)

    run_dir.mkdir(parents=True, exist_ok=True)
    backup_dir, history_csv = run_dir / "backup", run_dir / "history.csv"
    if resume and not backup_dir.exists():
        print(f"--resume: no saved state in {backup_dir}, starting from epoch 1")
        resume = False
    if resume:
        check_split_record(run_dir, data_dir)
    else:
        shutil.rmtree(backup_dir, ignore_errors=True)
        history_csv.unlink(missing_ok=True)
        (run_dir / "split.json").write_text(json.dumps(split_record(data_dir), indent=1))
    save_config(cfg, run_dir / "config.yaml")

    t = cfg["train"]
    mode = training_mode(cfg)
    monitor, direction, monitored_what, reference = selection(cfg)
    if t["lr_schedule"] not in ("constant", "cosine"):
        raise ConfigError(f"train.lr_schedule must be constant or cosine, not {t['lr_schedule']!r}")
    rate = t["learning_rate"]
    if t["lr_schedule"] == "cosine":  # from learning_rate down to 0 at the last step of train.epochs
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(1, t["epochs"] * len(train_ds)))
    with strategy.scope():
        model = get_model(cfg)
        model.compile(optimizer=keras.optimizers.Adam(rate),
                      loss=get_loss(t["loss"], masked=mode != "supervised"),
                      metrics=[psnr_metric()] if mode == "supervised" else None)
    model.summary()

    best_so_far = None
    if resume and history_csv.exists():
        with open(history_csv) as f:
            values = [float(r[monitor]) for r in csv.DictReader(f) if r.get(monitor)]
        best_so_far = (max if direction == "max" else min)(values, default=None)
    callbacks = [
        # first: the callbacks below read the numbers it logs
        body_validation(val_ds, t["loss"], size_multiple(cfg), mode),
        keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(str(run_dir / "model.keras"), monitor=monitor, mode=direction,
                                        save_best_only=True, initial_value_threshold=best_so_far),
        keras.callbacks.CSVLogger(str(history_csv), append=resume),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False, profile_batch=0),
        keras.callbacks.TerminateOnNaN(),
    ]
    start = time.perf_counter()
    # the dataset shuffles itself (seeded per epoch); fit's own shuffling would only add noise to that
    history = model.fit(train_ds, epochs=t["epochs"], shuffle=False, callbacks=callbacks, verbose=2)
    seconds = time.perf_counter() - start

    losses = history.history.get("loss", [])
    if losses and not all(math.isfinite(v) for v in losses + history.history.get("val_loss", [])):
        raise FloatingPointError(
            f"training stopped: the loss became {losses[-1]} (not finite) at epoch {len(losses)}. "
            f"Lower train.learning_rate (now {t['learning_rate']}) or check the data for NaN/inf values.")
    images = len(train_ds) * t["batch_size"] * len(losses)
    monitored = history.history.get(monitor, [])
    best = (int(np.argmax(monitored) if direction == "max" else np.argmin(monitored))) if monitored else None
    # wall time of fit(), per-epoch validation included; benchmark.py measures training steps alone
    return {"seconds": round(seconds, 1), "epochs_run": len(losses),
            "images_per_s_with_validation": round(images / seconds, 1) if seconds > 0 and losses else None,
            "mode": mode,
            "selection": {"monitor": monitor, "mode": direction, "split": "val", "what": monitored_what,
                          "reference": reference,
                          "best_epoch_this_session": None if best is None else best + 1,
                          "best_value_this_session": None if best is None else round(monitored[best], 6)}}


# -----------------------------------------------------------------------------
# evaluation

def predict_slices(model, dataset, index, multiple, rician=False, sigma_cache=None):
    """[(noisy, clean or None, truth or None, pred)] of batch `index`, one tuple of float32 (rows, cols) per slice.

    The model runs on the stored grid through enhance.predict_padded (what enhance.py runs on a DICOM series).
    rician (needs_rician_correction): the Rician mean is inverted with the sigma of the slice's whole noisy series
    (denoisers.correct_rician_mean, as enhance.py does on the series it enhances); sigma_cache keeps one stack per
    series from being measured again. When
    the arrays were resized (preprocess.image_size), all four are mapped back to each slice's acquisition matrix with
    grid.unresize_square, which also drops the square padding: metrics are taken on the grid the images
    were acquired on, as enhance.py writes its output."""
    from enhance import predict_padded
    from grid import unresize_square

    from data_factory import _zero
    from degrade import series_sigma
    from denoisers import correct_rician_mean

    sigma_cache = {} if sigma_cache is None else sigma_cache
    noisy, clean = dataset[index]  # noisy (B, H, W, C): the target slice first, then its context
    truth = dataset.truth_batch(index)
    pred = predict_padded(model, noisy, multiple, len(noisy))
    slices = []
    for j, row in enumerate(dataset.batch_rows(index)):
        if rician:
            key = row["noisy_file"]
            if key not in sigma_cache:
                sigma_cache[key] = series_sigma(dataset.array(key), _zero(row))[0]
            pred[j] = correct_rician_mean(pred[j], sigma_cache[key], _zero(row))
        images = (noisy[j, ..., 0], None if clean is None else clean[j, ..., 0],
                  None if truth is None else truth[j, ..., 0], pred[j])
        shape = (row.get("rows"), row.get("cols"))
        if None not in shape and noisy.shape[1:3] != shape:  # noisy is (B, H, W, C)
            images = tuple(None if a is None else unresize_square(a, shape) for a in images)
        slices.append(images)
    return slices


def evaluate(model, dataset, multiple, n_examples=3, rician=False):
    """Metrics of the model output and of the degraded input, per slice of a whole-slice dataset.

    Against two references: the 3T image (columns of metrics.pair_metrics) and, when the data has it, the
    noise-free truth (the same columns prefixed "truth_"). Both use one body mask per slice, computed on the
    truth when there is one (it has no noise to threshold) and on the 3T image otherwise. Data without clean images
    (degrade.model none) has only the truth columns, or none at all (real 1.5T data: nothing to score against).
    Slices are predicted and scored as predict_slices says (enhance.py's path, acquisition grid; rician: the Rician
    correction of self-supervised output). multiple: model.size_multiple.
    Returns (rows, examples): one dict per slice (manifest identity + metrics) and, for up to `n_examples`
    patients, the slice with the most tissue (arrays for reconstructions.png).
    """
    from metrics import body_mask, pair_metrics

    rows, best, sigmas = [], {}, {}
    for b in range(len(dataset)):
        for meta, (n, c, t, p) in zip(dataset.batch_rows(b), predict_slices(model, dataset, b, multiple, rician,
                                                                             sigmas)):
            if c is None and t is None:
                continue  # no reference for this slice
            mask = body_mask(c if t is None else t)
            row = {"patient_id": meta["patient_id"], "series_uid": meta["series_uid"],
                   "slice_index": meta["slice_index"]}
            if c is not None:
                shown = pair_metrics(p, n, c, mask)
                row.update(shown)
            if t is not None:
                shown = pair_metrics(p, n, t, mask)
                row.update({f"truth_{k}": v for k, v in shown.items()})
            rows.append(row)
            pid, tissue = meta["patient_id"], int(mask.sum())
            if (pid in best or len(best) < n_examples) and tissue > best.get(pid, {}).get("tissue", -1):
                best[pid] = {"tissue": tissue, "noisy": n.copy(), "clean": None if c is None else c.copy(),
                             "pred": p.copy(),
                             "title": f"{pid} slice {meta['slice_index']}",
                             "noisy_metrics": {"psnr": shown["noisy_psnr"], "ssim": shown["noisy_ssim"]},
                             "pred_metrics": {"psnr": shown["model_psnr"], "ssim": shown["model_ssim"]}}
                if t is not None:
                    best[pid]["truth"] = t.copy()
    return rows, list(best.values())


def summarize_both(rows):
    """metrics.summarize of the 3T-referenced columns, plus the same under "truth" when the rows have them."""
    from metrics import summarize

    summary = summarize(rows) if rows and all("model_psnr" in r for r in rows) else {}
    if rows and all("truth_model_psnr" in r for r in rows):
        summary["truth"] = summarize(rows, prefix="truth_")
    return summary


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


def evaluate_run(cfg, data_dir, run_dir, extra=None, patients=None):
    """Score the run's model.keras on the test patients (on val when the data has no test patients, said so),
    and on the validation patients separately; write metrics.json, metrics_per_slice.csv and the figures."""
    import figures
    from data_factory import PairedSlices, read_manifest
    from metrics import format_table, json_safe
    from model import context_offsets

    model_path = run_dir / "model.keras"
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} does not exist; train first (python main.py --run-dir {run_dir})")
    model = load_model(model_path)
    present = {r["split"] for r in read_manifest(data_dir)}
    split = "test" if "test" in present else "val"
    if split != "test":
        print(f"warning: {data_dir} has no test patients (preprocess.split {cfg['preprocess']['split']}); the "
              "numbers below are VALIDATION numbers, on the patients the checkpoint was selected on")

    def dataset(name):
        cap = cfg["train"]["max_eval_slices"] if name == split else cfg["train"]["max_val_slices"]
        return PairedSlices(data_dir, name, batch_size=cfg["train"]["batch_size"], context=context_offsets(cfg),
                            max_slices=cap, seed=cfg["seed"])

    start = time.perf_counter()
    from model import size_multiple

    test = dataset(split)
    rician = needs_rician_correction(cfg, test.rows[0].get("degrade_model"))
    rows, examples = evaluate(model, test, size_multiple(cfg), rician=rician)
    seconds = time.perf_counter() - start
    summary = {"split": split, "model_name": cfg["model"]["name"], "mode": cfg["train"]["mode"],
               "data_dir": str(data_dir), "config_hash": config_hash(cfg)}
    if rows:
        write_csv(rows, run_dir / "metrics_per_slice.csv")
        summary.update(summarize_both(rows))
        summary.update({"reference": "3T image (noisy); the 'truth' section: the noise-free signal (demo data only)"
                        if "model" in summary else "the noise-free truth only ('truth' section): the data has no "
                        "clean images (degrade.model none)",
                        "rician_correction": rician, "eval_seconds": round(seconds, 1),
                        "eval_ms_per_slice": round(1000 * seconds / len(rows), 1)})
        if split == "test" and "val" in present:
            summary["val"] = summarize_both(evaluate(model, dataset("val"), size_multiple(cfg), n_examples=0,
                                                     rician=rician)[0])
        summary["patients"] = (patients or split_record(data_dir))["patients"]
    else:
        summary["reference"] = None
        print(f"no reference to score against: {data_dir} has neither clean images (degrade.model none) nor a "
              "noise-free truth (demo data only). The model is trained; apply it with enhance.py.")
    summary.update(extra or {})
    (run_dir / "metrics.json").write_text(json.dumps(json_safe(summary), indent=2))
    if (run_dir / "history.csv").exists():
        figures.plot_loss_curve(run_dir / "history.csv", run_dir / "loss_curve.png",
                                title=f"{cfg['model']['name']}: loss (MSE+MAE)" if cfg["train"]["loss"] == "mse+mae"
                                else f"{cfg['model']['name']}: loss")
    if not rows:
        return summary
    figures.plot_reconstructions(examples, run_dir / "reconstructions.png")
    if "model" in summary:
        print()
        print(format_table(summary, split=split.capitalize(), reference="clean 3T"))
    if "truth" in summary:
        print()
        print(format_table(summary["truth"], split=split.capitalize(), reference="noise-free truth"))
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
    try:
        if args.eval_only:
            check_split_record(run_dir, data_dir)
        else:
            extra = {"train": train(cfg, data_dir, run_dir, resume=args.resume)}
    except SplitMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (FloatingPointError, ValueError) as e:
        sys.exit(f"error: {e}")
    if args.eval_only:
        setup_devices(cfg["train"])
        previous = run_dir / "metrics.json"
        if previous.is_file() and "train" in json.loads(previous.read_text()):
            extra = {"train": json.loads(previous.read_text())["train"]}  # keep the training figures
    return evaluate_run(cfg, data_dir, run_dir, extra)


if __name__ == "__main__":
    main()
