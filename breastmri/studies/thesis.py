"""The thesis reproduction study: every reading of the thesis autoencoder, side by side with the thesis' Table 1.

The 2021 thesis reports its 8+8-layer autoencoder at MSE 0.009342 (its "MSE" has a square root: an RMSE, see
metrics.thesis_mse), PSNR 29.18 dB and SSIM 0.930 on validation, after 10 epochs over 12,250 slices of 512 x 512
with Gaussian "1.5T" noise. This script trains each reading of its text (model.pools 8 = a pool after every
conv, literal; 4 = after every pair; 2) at the thesis' setting on a CPU budget given in steps, and scores each one
and the degraded input it starts from on the validation split, whole image, in the thesis' table format:

    python preprocessing.py --config configs/thesis.yaml --set preprocess.image_size=256 --out data/processed_thesis_demo
    python -m breastmri.studies.thesis --data data/processed_thesis_demo --run-dir runs/thesis_demo     # make thesis-demo

Normalization (--normalization): "minmax" is the thesis' per-image min-max scaling, applied to each batch from
data_factory.PairedSlices: (x - min(noisy)) / (max(noisy) - min(noisy)), the same two numbers for noisy and clean
(the clean image is not available at inference), undone exactly on the prediction. "ours" trains on
preprocessing's per-series percentile scale as it is. Metrics are reported on both scales with data_range 1:
the thesis' numbers were computed on its min-max scale, where the same error reads higher (the noisy image's
range exceeds 1), ours are comparable with the rest of the repo.

Deviations from the thesis at the defaults (a CPU budget of ~15 minutes on 2 cores), all recorded in
metrics.json; configs/thesis.yaml keeps the thesis' own settings for a full-budget (GPU) run:
- 256 x 256 instead of 512 x 512, and a budget in steps (--steps, per reading) of 150-600 steps of batch 4
  instead of the thesis' ~7,700 steps: pools 2 costs 6x the FLOPs of pools 4 per image, the literal reading
  cannot train on crops.
- --patch-size 64: the fewer-pool readings train on random 64 px tissue crops (they are fully convolutional);
  the model is rebuilt at the whole-slice size with the trained weights for validation. The literal reading
  needs 256 px and trains on whole slices.
- Adam at 1e-3 with a 100-step linear warm-up (--warmup-steps) and a cosine decay to 0 over the reading's steps
  (--decay cosine) instead of a constant 1e-4: with ~25x fewer steps, 1e-4 leaves every reading far from
  converged (pools 4: 21.2 dB after 200 steps vs 22.2 dB at 1e-3), and a constant 1e-3 keeps the whole-slice
  score swinging (pools 2 on uniform crops: 26.0, 21.6, 26.2 dB after 150, 300, 450 steps); with the decay
  pools 2 climbs 27.0, 28.9, 29.2 dB.
- Linear output (model.output_activation) instead of the sigmoid: nothing to saturate, so the warm-up alone
  keeps 1e-3 stable, and values above 1 (our normalization keeps them) are not clipped.
- Validation metrics on 64 evenly spaced validation slices (--max-val-slices) of all 5 validation patients.

Writes to --run-dir: config.yaml (resolved, of the chosen reading), model.keras (chosen reading), history.csv
(every reading, loss per step block and validation PSNR), metrics.json, reconstructions.png (degraded | 3T |
reconstructed, the thesis' layout) and study.md (the table).
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from breastmri.config import load_config, save_config
from breastmri.data.manifest import read_manifest
from breastmri.data.paired import PairedSlices
from breastmri.files import atomic_path, save_figure_atomic, write_csv, write_text_atomic
from breastmri.metrics import DATA_RANGE, json_safe, slice_metrics, thesis_mse
from breastmri.runtime import quiet_start

READINGS = (8, 4, 2)
# Table 1 of the thesis (validation set, 512 x 512, its min-max scale). Its "MSE" is an RMSE.
THESIS_TABLE1 = {"rmse": 0.009342, "psnr": 29.18, "ssim": 0.930}
SCALES = ("minmax", "ours")


# ---------------------------------------------------------------------------------------------------------------
# Normalization

class MinMaxNormalizer:
    """The thesis' per-image min-max scaling, reversible.

    For image i of a batch (B, H, W, 1): lo_i = min(noisy_i), scale_i = max(noisy_i) - lo_i (1 for a constant
    image); apply(x) = (x - lo) / scale maps the noisy image onto [0, 1] exactly and the clean image with the
    same numbers, invert(y) = y * scale + lo undoes it. Computed in float64; the result has the input's dtype.
    """

    name = "minmax"

    def stats(self, noisy):
        """(lo, scale), each float64 (B, 1, 1, 1), from a noisy batch (B, H, W, 1)."""
        noisy = np.asarray(noisy, np.float64)
        axes = tuple(range(1, noisy.ndim))
        lo = noisy.min(axis=axes, keepdims=True)
        scale = noisy.max(axis=axes, keepdims=True) - lo
        return lo, np.where(scale > 0, scale, 1.0)

    def apply(self, x, stats):
        lo, scale = stats
        return ((np.asarray(x, np.float64) - lo) / scale).astype(np.asarray(x).dtype)

    def invert(self, y, stats):
        lo, scale = stats
        return (np.asarray(y, np.float64) * scale + lo).astype(np.asarray(y).dtype)


class IdentityNormalizer(MinMaxNormalizer):
    """Preprocessing's scale as it is (per series: 0.5th..99.5th percentile of the clean series -> 0..1)."""

    name = "ours"

    def stats(self, noisy):
        shape = (len(noisy),) + (1,) * (np.ndim(noisy) - 1)
        return np.zeros(shape), np.ones(shape)


NORMALIZERS = {"minmax": MinMaxNormalizer(), "ours": IdentityNormalizer()}


def normalized_batches(dataset, normalizer):
    """A keras.utils.PyDataset yielding dataset's (noisy, clean) batches normalized with `normalizer`."""
    import keras

    class Normalized(keras.utils.PyDataset):
        def __len__(self):
            return len(dataset)

        def __getitem__(self, index):
            noisy, clean = dataset[index]
            stats = normalizer.stats(noisy)
            return normalizer.apply(noisy, stats), normalizer.apply(clean, stats)

        def on_epoch_end(self):
            dataset.on_epoch_end()

    return Normalized()


# ---------------------------------------------------------------------------------------------------------------
# Training

def reading_patch(args, pools):
    """Crop side for this reading: args.patch_size where the reading can take it (a multiple of 2**pools smaller
    than the slice), else None (whole slices: the literal reading needs 256 px)."""
    p = args.patch_size
    return p if p and p % 2 ** pools == 0 and p < args.image_size else None


def reading_config(args, pools, size=None):
    """The resolved config of one reading: configs/thesis.yaml, the study's settings, model.pools = pools."""
    steps = args.steps[pools]
    overrides = [f"preprocess.image_size={size or args.image_size}", f"model.pools={pools}",
                 f"model.output_activation={args.output_activation}", f"train.learning_rate={args.learning_rate}",
                 f"train.batch_size={args.batch_size}", f"train.patch_size={reading_patch(args, pools) or 'null'}",
                 f"train.steps_per_epoch={min(args.eval_every, steps)}",
                 f"train.epochs={max(1, steps // args.eval_every)}", f"seed={args.seed}"] + list(args.set)
    return load_config(args.config, overrides)


def learning_rate(peak, warmup_steps, decay_steps=0):
    """Adam's learning rate: constant `peak`, or a linear ramp 0 -> peak over warmup_steps, then constant; with
    decay_steps > 0 a half-cosine from peak down to 0 at step decay_steps after the warm-up (a deviation: at a
    budget this short, Adam at a constant 1e-3 keeps the whole-slice score swinging by several dB)."""
    import keras
    from keras import ops

    if not warmup_steps and not decay_steps:
        return peak

    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = ops.cast(step, "float32")
            rate = peak * ops.minimum(1.0, (step + 1.0) / max(warmup_steps, 1))
            if decay_steps:
                progress = ops.clip((step - warmup_steps) / max(decay_steps - warmup_steps, 1), 0.0, 1.0)
                rate = rate * 0.5 * (1.0 + ops.cos(math.pi * progress))
            return rate

        def get_config(self):
            return {}

    return Schedule()


def train_reading(args, pools, val_batches):
    """Train one reading for args.steps[pools] steps; (whole-slice model, history rows, training seconds)."""
    import keras

    from breastmri.restore.losses import get_loss
    from breastmri.restore.networks import get_model

    keras.utils.set_random_seed(args.seed)
    patch, steps = reading_patch(args, pools), args.steps[pools]
    block_steps = min(args.eval_every, steps)
    cfg = reading_config(args, pools, size=patch)
    model = get_model(cfg)
    model.compile(keras.optimizers.Adam(learning_rate(args.learning_rate, args.warmup_steps,
                                                      steps if args.decay == "cosine" else 0)),
                  get_loss(cfg["train"]["loss"]))
    train = PairedSlices(args.data, "train", batch_size=args.batch_size, shuffle=True, augment=False,
                         patch_size=patch, seed=args.seed, steps_per_epoch=block_steps,
                         crop_candidates=args.crop_candidates)
    batches = normalized_batches(train, NORMALIZERS[args.normalization])
    whole = get_model(reading_config(args, pools)) if patch else model
    history, start = [], time.time()
    for block in range(steps // block_steps):
        fit = model.fit(batches, epochs=block + 1, initial_epoch=block, verbose=args.verbose)
        if whole is not model:
            whole.set_weights(model.get_weights())
        scores = [slice_metrics(p, c)["psnr"] for p, c in predict(whole, val_batches, args.normalization)]
        history.append({"pools": pools, "step": (block + 1) * block_steps, "loss": fit.history["loss"][-1],
                        "val_psnr_ours": float(np.mean(scores)), "seconds": round(time.time() - start, 1)})
        print(f"  pools={pools} step {history[-1]['step']}: loss {history[-1]['loss']:.5f}, "
              f"val PSNR {history[-1]['val_psnr_ours']:.2f} dB (ours, {len(scores)} slices), "
              f"{history[-1]['seconds']:.0f} s", flush=True)
    seconds = time.time() - start
    return whole, history, seconds


def predict(model, dataset, normalization):
    """(pred, clean) pairs, (H, W) each on our scale, of every slice in dataset (predicted normalized, inverted)."""
    normalizer = NORMALIZERS[normalization]
    for index in range(len(dataset)):
        noisy, clean = dataset[index]
        stats = normalizer.stats(noisy)
        pred = normalizer.invert(model.predict(normalizer.apply(noisy, stats), verbose=0), stats)
        yield from zip(pred[..., 0], clean[..., 0])


# ---------------------------------------------------------------------------------------------------------------
# Evaluation

def evaluate(model, dataset, normalization):
    """Mean and std over slices of rmse/mse/psnr/ssim of the model and of the degraded input, on both scales.

    {"model" | "noisy": {"minmax" | "ours": {metric: {"mean", "std"}}}}, data_range 1 on each scale. model None
    scores only the degraded input.
    """
    values = {who: {scale: {m: [] for m in ("rmse", "mse", "psnr", "ssim")} for scale in SCALES}
              for who in ("model", "noisy")}
    normalizer, minmax = NORMALIZERS[normalization], NORMALIZERS["minmax"]
    for index in range(len(dataset)):
        noisy, clean = dataset[index]
        images = {"noisy": noisy}
        if model is not None:
            stats = normalizer.stats(noisy)
            images["model"] = normalizer.invert(model.predict(normalizer.apply(noisy, stats), verbose=0), stats)
        mm = minmax.stats(noisy)  # the thesis' scale: min-max of the degraded input, for every image alike
        for who, image in images.items():
            for scale, (x, y) in (("ours", (image, clean)), ("minmax", (minmax.apply(image, mm),
                                                                       minmax.apply(clean, mm)))):
                for p, c in zip(x[..., 0].astype(np.float64), y[..., 0].astype(np.float64)):
                    m = slice_metrics(p, c, data_range=DATA_RANGE)
                    m["rmse"] = thesis_mse(p, c)  # the thesis' "MSE", the same number as slice_metrics' rmse
                    for key in values[who][scale]:
                        values[who][scale][key].append(m[key])
    return {who: {scale: {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else math.nan}
                          for k, v in per.items()} for scale, per in by_scale.items()}
            for who, by_scale in values.items() if by_scale["ours"]["psnr"]}


def study_table(results, noisy, scale):
    """Markdown: the thesis' Table 1 columns ("MSE" = RMSE, PSNR, SSIM), thesis | each reading | degraded input."""
    lines = ["| on the validation split, whole image | MSE (thesis' formula: RMSE) | PSNR (dB) | SSIM | "
             "PSNR gain vs degraded (dB) | steps | training s |", "|---|---|---|---|---|---|---|",
             f"| thesis Table 1 (512², its min-max scale, ~7,700 steps) | {THESIS_TABLE1['rmse']:.6f} | "
             f"{THESIS_TABLE1['psnr']:.2f} | {THESIS_TABLE1['ssim']:.3f} | not reported | | |"]

    def row(label, m, gain="", steps="", seconds=""):
        return (f"| {label} | {m['rmse']['mean']:.6f} | {m['psnr']['mean']:.2f} ± {m['psnr']['std']:.2f} | "
                f"{m['ssim']['mean']:.3f} ± {m['ssim']['std']:.3f} | {gain} | {steps} | {seconds} |")

    for pools, r in results.items():
        m = r["metrics"]["model"][scale]
        gain = m["psnr"]["mean"] - noisy[scale]["psnr"]["mean"]
        label = {8: "pools 8 (literal: after every conv)", 4: "pools 4 (after every pair)",
                 2: "pools 2 (after every fourth)"}[pools]
        lines.append(row(label, m, f"{gain:+.2f}", r["steps"], f"{r['seconds']:.0f}"))
    lines.append(row("degraded input (Gaussian σ 0.05)", noisy[scale]))
    return "\n".join(lines)


def plot_reconstructions(model, dataset, normalization, out_png, count=3):
    """The thesis' layout: one row per validation slice, degraded | 3T | reconstructed (our scale, gray 0..1)."""
    from breastmri.evaluate.figures import _pyplot

    plt = _pyplot()
    noisy_all, clean_all = [], []
    for index in range(len(dataset)):
        noisy, clean = dataset[index]
        noisy_all.append(noisy), clean_all.append(clean)
    noisy_all, clean_all = np.concatenate(noisy_all), np.concatenate(clean_all)
    picks = np.argsort(clean_all.mean(axis=(1, 2, 3)))[::-1][np.linspace(0, len(clean_all) // 2, count).astype(int)]
    normalizer = NORMALIZERS[normalization]
    stats = normalizer.stats(noisy_all[picks])
    pred = normalizer.invert(model.predict(normalizer.apply(noisy_all[picks], stats), verbose=0), stats)
    fig, axes = plt.subplots(count, 3, figsize=(9, 3.1 * count), squeeze=False)
    for row, noisy, clean, rec in zip(axes, noisy_all[picks, ..., 0], clean_all[picks, ..., 0], pred[..., 0]):
        for ax, image, title in ((row[0], noisy, "degraded"), (row[1], clean, "3T"), (row[2], rec, "reconstructed")):
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            if image is not clean:
                m = slice_metrics(image.astype(np.float64), clean.astype(np.float64))
                title += f"\nPSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.3f}"
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    save_figure_atomic(fig, out_png, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# The study

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/processed_thesis_demo", help="preprocessing.py --out folder")
    p.add_argument("--run-dir", default="runs/thesis_demo")
    p.add_argument("--config", default="configs/thesis.yaml")
    p.add_argument("--readings", default="8,4,2", help="model.pools values to train, comma-separated")
    p.add_argument("--choose", type=int, default=None, help="reading written as model.keras (default: --config's "
                                                             "model.pools)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--steps", default="8=150,4=600,2=450",
                   help="training steps per reading: one number for all, or pools=steps pairs")
    p.add_argument("--eval-every", type=int, default=150, help="steps between validation checks (history.csv)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam peak (the thesis: 1e-4; see the docstring)")
    p.add_argument("--warmup-steps", type=int, default=100, help="linear learning-rate warm-up (a deviation)")
    p.add_argument("--decay", default="cosine", choices=("none", "cosine"),
                   help="cosine: the learning rate falls to 0 over each reading's steps after the warm-up")
    p.add_argument("--output-activation", default="linear", choices=("sigmoid", "linear"))
    p.add_argument("--normalization", default="ours", choices=tuple(NORMALIZERS))
    p.add_argument("--patch-size", type=int, default=64, help="train on crops (a deviation); None: whole slices")
    p.add_argument("--crop-candidates", type=int, default=4,
                   help="crop positions drawn per sample, the one with most tissue kept (1: uniform crops, air as "
                        "often as the whole-image score counts it)")
    p.add_argument("--max-val-slices", type=int, default=64, help="score an evenly spaced subset of validation (0: all)")
    p.add_argument("--monitor-slices", type=int, default=8, help="validation slices scored every --eval-every")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    p.add_argument("--verbose", type=int, default=0, help="Keras fit verbosity; given, TensorFlow's start-up logging shows too")
    args = p.parse_args(argv)
    try:
        readings = [int(r) for r in args.readings.split(",")]
        pairs = [item.split("=") if "=" in item else (None, item) for item in args.steps.split(",")]
        steps = {int(k) if k is not None else None: int(v) for k, v in pairs}
        args.steps = {r: steps[r] if r in steps else steps[None] for r in readings}
    except (ValueError, KeyError):
        p.error(f"--steps {args.steps!r} must be a number or pools=steps pairs covering --readings {args.readings}")
    for pools, steps in args.steps.items():
        if steps < 1 or (steps > args.eval_every and steps % args.eval_every):
            p.error(f"--steps for pools {pools} ({steps}) must be positive and, above --eval-every "
                    f"({args.eval_every}), a multiple of it")
    args.readings = readings
    return args


def run_study(args):
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    readings = args.readings
    for pools in readings:
        reading_config(args, pools)  # fail on a bad config before any training
    val = PairedSlices(args.data, "val", batch_size=8, max_slices=args.max_val_slices or None)
    monitor = PairedSlices(args.data, "val", batch_size=8, max_slices=args.monitor_slices)
    train_rows = read_manifest(args.data, "train")
    print(f"thesis study: readings {readings}, steps {args.steps} x batch {args.batch_size}, "
          f"lr {args.learning_rate:g}, {args.normalization} normalization, {args.output_activation} output, "
          f"crops {({p: reading_patch(args, p) for p in readings})} (None: whole slices); "
          f"train {len(train_rows)} slices, validation {len(val.rows)} slices of "
          f"{len({r['patient_id'] for r in val.rows})} patients", flush=True)
    results, history, models = {}, [], {}
    for pools in readings:
        model, rows, seconds = train_reading(args, pools, monitor)
        metrics = evaluate(model, val, args.normalization)
        results[pools] = {"metrics": {"model": metrics["model"]}, "steps": args.steps[pools],
                          "seconds": round(seconds, 1), "patch_size": reading_patch(args, pools),
                          "images_seen": args.steps[pools] * args.batch_size}
        history += rows
        models[pools] = model
    noisy = evaluate(None, val, args.normalization)["noisy"]
    chosen = args.choose or load_config(args.config)["model"]["pools"]
    if chosen not in results:
        raise ValueError(f"the chosen reading pools={chosen} was not trained (--readings {readings})")
    best, cfg = results[chosen]["metrics"]["model"], reading_config(args, chosen)
    with atomic_path(run_dir / "model.keras") as tmp:
        models[chosen].save(tmp)
    save_config(cfg, run_dir / "config.yaml")
    write_csv(history, run_dir / "history.csv")
    plot_reconstructions(models[chosen], val, args.normalization, run_dir / "reconstructions.png")
    gain = {s: best[s]["psnr"]["mean"] - noisy[s]["psnr"]["mean"] for s in SCALES}
    summary = {"chosen_pools": chosen, "model": best, "noisy_input": noisy, "psnr_gain_db": gain,
               "ssim_gain": {s: best[s]["ssim"]["mean"] - noisy[s]["ssim"]["mean"] for s in SCALES},
               "readings": {str(p): r for p, r in results.items()}, "thesis_table1": THESIS_TABLE1,
               "n_val_slices": len(val.rows), "data_range": DATA_RANGE, "data": str(args.data),
               "budget": {"steps": args.steps, "batch_size": args.batch_size, "image_size": args.image_size,
                          "patch_size": args.patch_size, "learning_rate": args.learning_rate,
                          "warmup_steps": args.warmup_steps, "decay": args.decay,
                          "normalization": args.normalization,
                          "output_activation": args.output_activation,
                          "seconds_total": round(sum(r["seconds"] for r in results.values()), 1)},
               "config": cfg}
    write_text_atomic(run_dir / "metrics.json", json.dumps(json_safe(summary), indent=2))
    tables = {s: study_table(results, noisy, s) for s in SCALES}
    write_text_atomic(run_dir / "study.md", (
        f"# Thesis reproduction study\n\nsteps {args.steps} x batch {args.batch_size} per reading, "
        f"{args.image_size}², lr {args.learning_rate:g}, {args.normalization} normalization, "
        f"{args.output_activation} output; {len(val.rows)} validation slices. Chosen: pools {chosen}.\n\n"
        f"## On the thesis' min-max scale (what its Table 1 used)\n\n{tables['minmax']}\n\n"
        f"## On our scale (preprocessing's percentiles)\n\n{tables['ours']}\n"))
    print(f"\n{tables['minmax']}\n\n(our scale)\n{tables['ours']}\n\nchosen reading: pools {chosen}, whole-image PSNR "
          f"gain {gain['ours']:+.2f} dB (ours), {gain['minmax']:+.2f} dB (min-max); wrote {run_dir}/")
    return summary


if __name__ == "__main__":
    quiet_start()
    run_study(parse_args())
