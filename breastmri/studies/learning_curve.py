"""The learning curve of a run: validation body PSNR against the noise-free truth by training step, beside the
degraded input, the guarded temporal projection (tpca) and MP-PCA on the same validation frames.

    python -m breastmri.studies.learning_curve --run-dir runs/full --data data/processed_cohort \
        --out docs/learning_curve.png

The run's history.csv holds val_truth_psnr after every epoch (restore/training.validate: the phantom's truth, on
the run's train.max_val_slices validation slices, the model's weight average as it is checkpointed); step =
epoch x train.steps_per_epoch (+ the start, step 0, of a run that starts from another: train.init_from). The
baselines are scored here by the benchmark's own code (evaluate/benchmark_quality.evaluate_quality) on the same
slices, spread_slices(max_val_slices) of the validation patients, with the same body masks (of the truth).
Writes the figure and learning_curve.json beside history.csv. Validation patients only: the test patients are
for the final tables.

--also draws other runs of the same slices in grey (a shorter schedule); --baselines-from reuses the baselines of
an earlier study of the same slices; --real RUN=BENCHMARK_JSON ... adds a panel: each run's gain on a real dynamic
(benchmark.py --parts real) at the step of the model it kept, against the real 3T frames and held-back frames.
"""

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np

from breastmri.config import load_run_config
from breastmri.files import save_figure_atomic, write_text_atomic
from breastmri.runtime import add_verbose_flag, quiet_start

BASELINES = ("noisy", "tpca", "mppca")
MPPCA_RADIUS = 3  # MP-PCA's patch radius: the benchmark's calibrated value on the demo's training patients
LABELS = {"noisy": "degraded input", "tpca": "tpca (guarded projection)", "mppca": "MP-PCA (registered)"}


def curve(run_dir, data_dir):
    """[(step, val_truth_psnr)] of a run's history.csv, step 0 its start when it had one (metrics.json); an epoch
    of a run without train.steps_per_epoch is one pass over the training slices of `data_dir`."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir / "config.yaml")
    steps = steps_per_epoch(cfg, data_dir)
    with open(run_dir / "history.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_truth_psnr")]
    points = [((int(r["epoch"]) + 1) * steps, float(r["val_truth_psnr"])) for r in rows]
    metrics = run_dir / "metrics.json"
    start = json.loads(metrics.read_text())["train"]["selection"].get("start") if metrics.is_file() else None
    if start and "val_truth_psnr" in start:
        points.insert(0, (0, start["val_truth_psnr"]))
    return cfg, points


def steps_per_epoch(cfg, data_dir):
    """A run's steps per epoch: train.steps_per_epoch, else one pass over the training slices of `data_dir`."""
    steps = cfg["train"]["steps_per_epoch"]
    if steps is None:
        from breastmri.data.manifest import read_manifest

        steps = math.ceil(len(read_manifest(data_dir, "train")) / cfg["train"]["batch_size"])
    return steps


def baselines(data_dir, max_slices, mppca_radius):
    """{method: mean body PSNR against the truth} of BASELINES on the validation slices validation scores."""
    from breastmri.evaluate.benchmark_quality import evaluate_quality

    rows, _ = evaluate_quality(BASELINES, {}, data_dir, max_slices, {"mppca": mppca_radius}, split="val")
    return {m: float(np.mean([r["truth_masked_psnr"] for r in rows if r["method"] == m])) for m in BASELINES}


def kept_baselines(path, data_dir, max_slices, mppca_radius):
    """The baselines of an earlier learning_curve.json, when it scored the same slices (same data folder and
    max_val_slices) with the same MP-PCA radius (MPPCA_RADIUS where it does not say): they do not depend on the run, and
    MP-PCA takes most of the study's time."""
    earlier = json.loads(Path(path).read_text())
    radius = earlier.get("mppca_radius", MPPCA_RADIUS)
    if (Path(earlier["data"]).resolve(), earlier["max_val_slices"], radius) != \
            (Path(data_dir).resolve(), max_slices, mppca_radius):
        raise SystemExit(f"{path} scored {earlier['max_val_slices']} slices of {earlier['data']} (MP-PCA radius "
                         f"{radius}), not {max_slices} of {data_dir} (radius {mppca_radius}): score the baselines "
                         "anew (no --baselines-from)")
    return earlier["baselines"]


def real_gains(pairs, data_dir):
    """[(step, mean gain against the real 3T frames, against held-back frames, frames worse)] of runs scored on a
    real dynamic: pairs RUN=BENCHMARK_JSON (benchmark.py --parts real of that run; its first dynamic's U-Net),
    step = the kept epoch (metrics.json's selection) x steps per epoch."""
    out = []
    for pair in pairs:
        run, _, path = pair.partition("=")
        steps = steps_per_epoch(load_run_config(Path(run) / "config.yaml"), data_dir)
        best = json.loads(Path(run, "metrics.json").read_text())["train"]["selection"]["best_epoch"]  # 1-based
        dynamic = next(d for d in json.loads(Path(path).read_text())["real"]["dynamics"] if "skipped" not in d)
        gain, held = (dynamic[k]["summary"]["unet"] for k in ("against_3t", "against_held_back"))
        out.append((best * steps, gain["mean_gain_db"], held["mean_gain_db"], len(gain["frames_worse"])))
    return sorted(out)


def plot(curves, references, out, title, real=()):
    """curves: [(label, [(step, psnr)])], the first in black, the others in grey; real: real_gains' rows, a
    second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if real else 1, figsize=(11, 4) if real else (6.4, 4), squeeze=False)
    ax = axes[0, 0]
    for (label, points), style in zip(curves, ("o-k", "s-", "^-", "v-")):
        steps, values = zip(*points)
        ax.plot(steps, values, style, label=label, **({} if style == "o-k" else {"color": "0.55", "markersize": 3}))
    for (method, value), style in zip(references.items(), (":", "--", "-.")):
        ax.axhline(value, linestyle=style, color="gray", label=f"{LABELS[method]} {value:.2f}")
    ax.set_xlabel("training step (16 crops of 96 px)")
    ax.set_ylabel("body PSNR vs truth, dB (validation)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    if real:
        ax = axes[0, 1]
        steps, gains, held, worse = zip(*real)
        ax.plot(steps, gains, "o-k", label="against each frame's real 3T image")
        ax.plot(steps, held, "s--", color="0.45", label="against held-back pre-contrast frames")
        for step, gain, n in zip(steps, gains, worse):
            ax.annotate(f"{n} frames worse", (step, gain), textcoords="offset points", xytext=(4, 6), fontsize=7)
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_xlabel("training step of the kept model")
        ax.set_ylabel("real dynamic: mean gain over the input, dB")
        ax.set_title("the same setup on real data (ProstateX TWIST DCE, 70 frames)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, out, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--data", required=True, help="the run's preprocessed data")
    p.add_argument("--out", help="figure (default: learning_curve.png in the run dir)")
    p.add_argument("--mppca-radius", type=int, default=MPPCA_RADIUS, help="MP-PCA's patch radius (MPPCA_RADIUS)")
    p.add_argument("--also", nargs="*", default=[], help="other runs on the same validation slices, drawn in grey "
                                                           "(e.g. a shorter schedule)")
    p.add_argument("--real", nargs="*", default=[], metavar="RUN=BENCHMARK_JSON",
                   help="runs of this setup scored on a real dynamic (benchmark.py --parts real): a second panel")
    p.add_argument("--baselines-from", help="an earlier learning_curve.json of the same data and slices: its "
                                            "baselines are reused instead of scored anew")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    cfg, points = curve(args.run_dir, args.data)
    if not points:
        raise SystemExit(f"{args.run_dir}/history.csv has no val_truth_psnr (data without a truth?)")
    max_slices = cfg["train"]["max_val_slices"]
    others = [(run, curve(run, args.data)) for run in args.also]
    if any(other_cfg["train"]["max_val_slices"] != max_slices for _, (other_cfg, _) in others):
        raise SystemExit("--also runs must validate on the same number of slices (train.max_val_slices)")
    references = (kept_baselines(args.baselines_from, args.data, max_slices, args.mppca_radius) if args.baselines_from
                  else baselines(args.data, max_slices, args.mppca_radius))
    result = {"run_dir": args.run_dir, "data": args.data, "max_val_slices": max_slices,
              "mppca_radius": args.mppca_radius, "steps": [s for s, _ in points],
              "val_truth_psnr": [v for _, v in points], "baselines": references}
    real = real_gains(args.real, args.data)
    if real:
        result["real"] = [dict(zip(("step", "gain_vs_3t_db", "gain_vs_held_back_db", "frames_worse"), row))
                          for row in real]
    write_text_atomic(Path(args.run_dir, "learning_curve.json"), json.dumps(result, indent=1))
    out = args.out or str(Path(args.run_dir) / "learning_curve.png")
    curves = [(f"U-Net (weight average), {args.run_dir}", points)]
    curves += [(f"{run}, {len(p) and p[-1][0]} steps", p) for run, (_, p) in others]
    plot(curves, references, out, f"validation patients, {max_slices} slices", real)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    quiet_start()
    main()
