"""Train a restoration model: the datasets of a run, checkpoint selection on the validation patients, resume.

    train(cfg, data_dir, run_dir)     # model.keras (the best validation epoch), history.csv, split.json, ...

Supervised runs select the epoch with the best body PSNR against their training target on the validation
patients; self-supervised runs (noise2noise, noise2void) their own loss on the noisy validation frames. The
test patients are never read here.
"""

import csv
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from breastmri.config import ConfigError, save_config
from breastmri.data.splits import check_split_record, split_record
from breastmri.files import atomic_path, sweep_stale, temporary_path, write_text_atomic
from breastmri.restore.losses import get_loss, pixel_loss, psnr_metric
from breastmri.restore.multiworker import (
    SHARDS,
    STRATEGY_NAME,
    distributed_dataset,
    prepare_for_workers,
    worker_task,
)
from breastmri.runtime import setup_devices

# -----------------------------------------------------------------------------
# losses and training metrics (registered so model.keras reloads with them)

# What checkpoint selection maximizes (see body_validation).
MONITOR = "val_body_psnr"


def training_mode(cfg):
    """cfg["train"]["mode"], checked: supervised | noise2noise | noise2void (data_factory.MODES)."""
    from breastmri.data.paired_checks import MODES

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
    if cfg["train"]["target"] == "expected":
        return MONITOR, "max", "body PSNR against the truth's expected 3T magnitude", "expected 3T magnitude (phantom)"
    if cfg["train"]["target"] == "truth":
        return MONITOR, "max", "body PSNR against the phantom's noise-free truth", "truth (phantom)"
    return MONITOR, "max", "body PSNR against the 3T image", "3T"


def atomic_checkpoint(path, **kwargs):
    """keras' ModelCheckpoint (save_best_only, kwargs its own) that never leaves a half model at `path`: each epoch
    it clears the temporary name (temporary_path), lets ModelCheckpoint save there if the epoch is the best so far,
    and renames only a file saved in this epoch into place; a file an interrupted save left is never taken."""
    import keras

    class AtomicCheckpoint(keras.callbacks.ModelCheckpoint):
        def __init__(self):
            self.final, self.staged = Path(path), temporary_path(path)
            super().__init__(str(self.staged), save_best_only=True, **kwargs)

        def on_epoch_end(self, epoch, logs=None):
            self.staged.unlink(missing_ok=True)
            super().on_epoch_end(epoch, logs)
            if self.staged.exists():
                os.replace(self.staged, self.final)

        def on_train_end(self, logs=None):
            self.staged.unlink(missing_ok=True)
            super().on_train_end(logs)

    return AtomicCheckpoint()


def atomic_backup(backup_dir):
    """keras' BackupAndRestore (the training state at each epoch's end, which --resume reads) whose weights and
    epoch record are saved under temporary names and renamed into place, the weights first: a run killed while
    saving leaves the previous epoch's backup whole (killed between the two renames: the newer weights with the
    older epoch, which is then trained again from them)."""
    import keras

    class AtomicBackup(keras.callbacks.BackupAndRestore):
        def __init__(self):
            super().__init__(str(backup_dir), delete_checkpoint=False)
            self.final = self._weights_path, self._training_metadata_path  # keras' own names (a test checks them)

        def _save_model(self):
            weights, record = self.final
            with atomic_path(record) as staged_record, atomic_path(weights) as staged_weights:  # inner renamed first
                self._weights_path, self._training_metadata_path = str(staged_weights), str(staged_record)
                try:
                    super()._save_model()
                finally:
                    self._weights_path, self._training_metadata_path = weights, record

    return AtomicBackup()


def needs_rician_correction(cfg, degrade_model):
    """True when a run's output estimates E[magnitude] and must have the Rician mean inverted: self-supervised
    modes on magnitude data (degrade model field or none; the thesis' gaussian noise has no Rician bias)."""
    return cfg["train"]["mode"] != "supervised" and degrade_model != "gaussian"


def load_splits(cfg, data_dir, shard=None):
    """Training (crops, shuffled, augmented as configured) and validation (whole slices) datasets."""
    from breastmri.data.manifest import read_manifest
    from breastmri.data.paired import PairedSlices
    from breastmri.data.paired_checks import TARGETS
    from breastmri.restore.networks import check_input_size, context_offsets

    t = cfg["train"]
    if t["target"] not in TARGETS:
        raise ConfigError(f"train.target must be one of {', '.join(TARGETS)}, not {t['target']!r}")
    present = {r["split"] for r in read_manifest(data_dir)}
    for name in ("train", "val"):
        if name not in present:
            raise ValueError(f"{data_dir} has no {name} patients (preprocess.split {cfg['preprocess']['split']}); "
                             "training needs both: a checkpoint selected without validation patients would be "
                             "selected on the patients it is scored on. It needs at least 2 patients (this tree has "
                             f"{len({r['patient_id'] for r in read_manifest(data_dir)})}); add patients, or change "
                             "preprocess.split or seed and preprocess again (the patients' hash decides their split).")
    mode = training_mode(cfg)
    common = dict(batch_size=t["batch_size"], seed=cfg["seed"], context=context_offsets(cfg), mode=mode,
                  noise2noise_frames=t["noise2noise_frames"], register=t["noise2noise_register"],
                  mask_fraction=t["mask_fraction"],
                  target=t["target"] if mode == "supervised" else "3t")  # a self-supervised target is its mode's
    train_args = dict(shuffle=True, augment=t["augment"], patch_size=t["patch_size"], shard=shard,
                      steps_per_epoch=t["steps_per_epoch"], workers=t["workers"],
                      frames_per_draw=t["frames_per_draw"] if mode == "supervised" else 1,
                      fine_structure=t["fine_structure"],
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
    if cfg["model"]["name"] == "thesis_autoencoder":  # a fixed S x S input: the data's slices must be S x S
        try:
            check_input_size(cfg, *train.image_shape)
        except ValueError as error:
            raise ConfigError(f"{error}: give main.py the preprocess.image_size {data_dir} was made with") from None
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


def validate(model, dataset, loss_name, multiple, masks=None):
    """{"val_loss", "val_psnr", "val_body_psnr"} of `model` on a whole-slice dataset, predicted as enhance.py
    does (padded to `multiple`, model.size_multiple), and "val_truth_psnr", the body PSNR against the noise-free
    truth, where the data has one (the phantom): the learning curve's measure, never the selection's (real data
    has no truth). masks: caches the body mask of each slice between calls."""
    from breastmri.metrics import DATA_RANGE, body_mask
    from breastmri.restore.predict import predict_padded

    def body_psnr(e, key, reference):
        if key not in masks:
            masks[key] = body_mask(reference)
        return 10 * math.log10(DATA_RANGE ** 2 / max(np.mean(e[masks[key]] ** 2), 1e-12)) if masks[key].any() else None

    masks = {} if masks is None else masks
    losses, psnr, body, truth_body = [], [], [], []
    for b in range(len(dataset)):
        noisy, clean = dataset[b]
        truth = dataset.truth_batch(b) if dataset.has_truth else None
        pred = predict_padded(model, noisy, multiple, len(noisy))[..., None]
        err = (pred - clean)[..., 0].astype(np.float64)
        for j in range(len(err)):
            e = err[j]
            losses.append(float(np.mean(pixel_loss(e, loss_name))))
            psnr.append(10 * math.log10(DATA_RANGE ** 2 / max(np.mean(e ** 2), 1e-12)))
            body.append(body_psnr(e, (b, j), clean[j, ..., 0]))
            if truth is not None:
                truth_body.append(body_psnr((pred - truth)[j, ..., 0].astype(np.float64), (b, j, "truth"),
                                            truth[j, ..., 0]))
    body, truth_body = [v for v in body if v is not None], [v for v in truth_body if v is not None]
    return {"val_loss": float(np.mean(losses)), "val_psnr": float(np.mean(psnr)),
            "val_body_psnr": float(np.mean(body)) if body else float(np.mean(psnr)),
            **({"val_truth_psnr": float(np.mean(truth_body))} if truth_body else {})}


def validate_selfsup(model, dataset, loss_name, multiple):
    """{"val_loss"}: the self-supervised loss of `model` on a whole-slice dataset of the same mode (its pairs and
    blind spots are drawn once, from the dataset's seed, so every epoch is scored on the same ones)."""
    from breastmri.restore.predict import predict_padded

    total, weight = 0.0, 0.0
    for b in range(len(dataset)):
        inputs, target = dataset[b]
        pred = predict_padded(model, inputs, multiple, len(inputs)).astype(np.float64)
        err, w = target[..., 0] - pred, target[..., 1]
        total, weight = total + float(np.sum(w * pixel_loss(err, loss_name))), weight + float(np.sum(w))
    return {"val_loss": total / max(weight, 1.0)}


# -----------------------------------------------------------------------------
# training

def _first_pass(backup_dir):
    """The pass of the training set the first epoch of this fit() reads: a PyDataset's epoch counter is 1 in the
    first epoch (Keras calls on_epoch_end once before it), plus the epochs BackupAndRestore resumes after."""
    path = Path(backup_dir) / "training_metadata.json"
    done = int(json.loads(path.read_text()).get("epoch", 0)) if path.is_file() else 0
    return 1 + done


def start_from(model, cfg, source, data_dir):
    """Copy the weights of a trained run (train.init_from: a run dir or its model.keras, e.g. the shipped
    models/default) into `model`. Refused when its model section differs (another network or other inputs), and
    when it was trained on a patient that `data_dir` holds out (validation or test): a fine-tuned model must not
    have seen the patients it is selected or scored on."""
    from breastmri.config import load_run_config
    from breastmri.data.splits import patients_seen, split_record
    from breastmri.restore.losses import load_model
    from breastmri.restore.shipped import resolve_model

    model_path, config_file = resolve_model(source)
    source_cfg = load_run_config(config_file)
    if source_cfg["model"] != cfg["model"]:
        differ = sorted(k for k in cfg["model"] if source_cfg["model"].get(k) != cfg["model"][k])
        raise ConfigError(f"train.init_from {source}: its model differs in {', '.join(differ)}; fine-tuning needs "
                          "the same network and inputs (copy its model section)")
    trained_on = patients_seen(model_path.parent, ("train",))
    if trained_on is None:
        raise ConfigError(f"train.init_from {source}: no split.json beside it (or beside a run it started from), so "
                          "which patients it was trained on cannot be checked")
    held_out = {p for name in ("val", "test") for p in split_record(data_dir)["patients"][name]}
    if trained_on & held_out:
        raise ConfigError(f"train.init_from {source} was trained on {len(trained_on & held_out)} patients that "
                          f"{data_dir} holds out for validation or test, e.g. {sorted(trained_on & held_out)[0]}")
    model.set_weights(load_model(model_path).get_weights())
    print(f"weights from {model_path}")


def train(cfg, data_dir, run_dir, resume=False):
    import keras
    import tensorflow as tf

    from breastmri.restore.networks import get_model, size_multiple

    strategy = setup_devices(cfg["train"])
    keras.utils.set_random_seed(cfg["seed"])
    distributed = cfg["train"]["distribute"] == "multi_worker"
    task, workers = worker_task() if distributed else (0, 1)
    if distributed and cfg["train"]["shard"] not in SHARDS:
        raise ConfigError(f"train.shard must be one of {', '.join(SHARDS)}, not {cfg['train']['shard']!r}")
    train_ds, val_ds = load_splits(cfg, data_dir, shard=(task, workers) if distributed else None)

    run_dir = Path(run_dir)
    own_dir = run_dir  # the chief writes the run; the other workers their own copy, removed after fit (below)
    if task > 0:
        own_dir = Path(tempfile.mkdtemp(prefix=f"worker-{task}-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    backup_dir, history_csv = run_dir / "backup", own_dir / "history.csv"
    if distributed:  # every worker keeps its own state, so --resume resumes each
        backup_dir = backup_dir / f"worker-{task}"
    if resume and not backup_dir.exists():
        print(f"--resume: no saved state in {backup_dir}, starting from epoch 1")
        resume = False
    for folder in (own_dir, backup_dir):  # what a killed run left under temporary names
        sweep_stale(folder)
    if resume:
        check_split_record(run_dir, data_dir)
    else:
        shutil.rmtree(backup_dir, ignore_errors=True)
        history_csv.unlink(missing_ok=True)
        write_text_atomic(own_dir / "split.json", json.dumps(split_record(data_dir), indent=1))
    save_config(cfg, own_dir / "config.yaml")

    t = cfg["train"]
    mode = training_mode(cfg)
    monitor, direction, monitored_what, reference = selection(cfg)
    if t["lr_schedule"] not in ("constant", "cosine"):
        raise ConfigError(f"train.lr_schedule must be constant or cosine, not {t['lr_schedule']!r}")
    rate, steps = t["learning_rate"], t["epochs"] * len(train_ds)
    if t["lr_schedule"] == "cosine":  # up from 0 over warmup_steps, then down to 0 at the last step of train.epochs
        warmup = min(int(t["warmup_steps"]), steps // 2)
        rate = keras.optimizers.schedules.CosineDecay(0.0 if warmup else rate, decay_steps=max(1, steps - warmup),
                                                      warmup_target=rate if warmup else None, warmup_steps=warmup)
    ema = float(t["ema_momentum"])
    if not 0 <= ema < 1:
        raise ConfigError(f"train.ema_momentum must lie in [0, 1), not {ema}")
    with strategy.scope():
        model = get_model(cfg)
        model.compile(optimizer=keras.optimizers.Adam(rate, use_ema=ema > 0, ema_momentum=ema or 0.99),
                      loss=get_loss(t["loss"], masked=mode != "supervised"),
                      metrics=[psnr_metric()] if mode == "supervised" else None)
    model.summary()
    if t["init_from"] and not resume:
        start_from(model, cfg, t["init_from"], data_dir)

    best_so_far = None
    if resume and history_csv.exists():
        with open(history_csv) as f:
            values = [float(r[monitor]) for r in csv.DictReader(f) if r.get(monitor)]
        best_so_far = (max if direction == "max" else min)(values, default=None)
    initial = None
    if t["init_from"] and not resume and mode == "supervised":  # a candidate too: kept unless an epoch beats it
        initial = validate(model, val_ds, t["loss"], size_multiple(cfg))
        print(f"start ({t['init_from']}): " + ", ".join(f"{k} {v:.4f}" for k, v in initial.items()))
        if best_so_far is None:
            with atomic_path(own_dir / "model.keras") as tmp:
                model.save(tmp)
            best_so_far = initial[monitor]
    callbacks = [
        # the training state as it is (the raw weights, their average in the optimizer), before the swap below
        atomic_backup(backup_dir),
        # the average in the model from here to the next epoch's start (at the last epoch for good)
        *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if ema > 0 else []),
        # before the rest: they read the numbers it logs
        body_validation(val_ds, t["loss"], size_multiple(cfg), mode),
        # the best epoch's model, saved under a temporary name and then renamed into place: never a half file
        atomic_checkpoint(own_dir / "model.keras", monitor=monitor, mode=direction,
                          initial_value_threshold=best_so_far),
        keras.callbacks.CSVLogger(str(history_csv), append=resume),
        keras.callbacks.TensorBoard(str(own_dir / "logs"), write_graph=False, profile_batch=0),
        keras.callbacks.TerminateOnNaN(),
    ]
    start = time.perf_counter()
    # the dataset shuffles itself (seeded per epoch); fit's own shuffling would only add noise to that
    try:
        if distributed:  # this worker's share of every global batch, from the epoch BackupAndRestore resumes at
            example = train_ds[0]  # the shapes, for both: built once
            prepare_for_workers(model, strategy, example)
            history = model.fit(distributed_dataset(strategy, train_ds, _first_pass(backup_dir), example),
                                epochs=t["epochs"], steps_per_epoch=len(train_ds), callbacks=callbacks,
                                verbose=2 if task == 0 else 0)
        else:
            history = model.fit(train_ds, epochs=t["epochs"], shuffle=False, callbacks=callbacks, verbose=2)
    finally:
        if own_dir != run_dir:
            shutil.rmtree(own_dir, ignore_errors=True)  # a worker's copy of the run: the chief's is the run
    seconds = time.perf_counter() - start

    losses = history.history.get("loss", [])
    if losses and not all(math.isfinite(v) for v in losses + history.history.get("val_loss", [])):
        raise FloatingPointError(
            f"training stopped: the loss became {losses[-1]} (not finite) at epoch {len(losses)}. "
            f"Lower train.learning_rate (now {t['learning_rate']}) or check the data for NaN/inf values.")
    images = len(train_ds) * t["batch_size"] * len(losses)
    # the kept epoch among all epochs of the run (a resumed run's earlier ones are in history.csv), 1-based
    monitored = list(enumerate(history.history.get(monitor, []), start=1))
    if history_csv.is_file():
        with open(history_csv) as f:
            monitored = [(int(r["epoch"]) + 1, float(r[monitor])) for r in csv.DictReader(f) if r.get(monitor)]
    # a fine-tune's start is the candidate before epoch 1 (best_epoch 0): kept unless an epoch beats it
    candidates = ([(0, initial[monitor])] if initial is not None else []) + monitored
    best = (max if direction == "max" else min)(candidates, key=lambda pair: pair[1], default=None)
    if best is not None and best[0] == 0:
        print(f"kept: the start ({t['init_from']}); no epoch beat its {monitor} {best[1]:.4f}")
    # wall time of fit(), per-epoch validation included; benchmark.py measures training steps alone
    return {"seconds": round(seconds, 1), "epochs_run": len(losses),
            "distribute": {"strategy": STRATEGY_NAME if distributed else "mirrored" if isinstance(
                               strategy, tf.distribute.MirroredStrategy) else "default",
                           "workers": workers, "replicas": int(strategy.num_replicas_in_sync),
                           "global_batch": t["batch_size"], "shard": t["shard"] if distributed else None,
                           "task": task},
            "images_per_s_with_validation": round(images / seconds, 1) if seconds > 0 and losses else None,
            "mode": mode,
            "selection": {"monitor": monitor, "mode": direction, "split": "val", "what": monitored_what,
                          "reference": reference, "init_from": t["init_from"],
                          "start": None if initial is None else {k: round(v, 6) for k, v in initial.items()},
                          # among every epoch of the run, those of earlier calls of a resumed run too
                          "epochs_in_history": len(monitored),
                          "best_epoch": None if best is None else best[0],
                          "best_value": None if best is None else round(best[1], 6)}}
