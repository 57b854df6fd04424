"""Which context should the default U-Net see? The same budget for each choice, scored on the test patients.

    python -m breastmri.studies.ablation --data data/processed_demo --out runs/ablation              # every variant below
    python -m breastmri.studies.ablation --data data/processed_demo --variants 1-frame,time-1 --epochs 2
    python -m breastmri.studies.ablation --data data/processed_demo --variants 1-frame+local --keep   # rerun one, keep the others

Each variant is a main.py run (configs/demo.yaml + its model.context + the shared budget), so each has the usual
artifacts under <out>/<variant>/. The table (<out>/ablation.md and .json) lists, per variant, the body PSNR and
SSIM against the noise-free truth on the test patients (the headline number; against the 3T image when the data
has no truth), the gain over the degraded input (paired per slice, 95% t-interval over patient means), the
peak-enhancement error over every test lesion (benchmark_kinetics, as make benchmark scores it; a temporal
context can flatten the enhancement curve a DCE series is read for), the checkpoint's validation body PSNR and
the training seconds. docs/results.md picks the default by the validation column (what a user without a test split
would choose by) and shows the test columns beside it: a single comparison of a handful of variants.
"""

import argparse
import json
import sys
from pathlib import Path

from breastmri.config import load_config
from breastmri.evaluate.evaluation import evaluate_run
from breastmri.files import write_text_atomic
from breastmri.restore.training import train
from breastmri.runtime import add_verbose_flag, quiet_start

ROOT = Path(__file__).resolve().parents[2]  # the repository: configs/

# name -> model.context settings (time: +-time points, slices: +-slices, precontrast_frames: guide channel,
# projection: the frame projected onto its position's principal time courses, of the whole slice ("global") or
# of blocks around each pixel ("local"), or "local" after moving the frames onto the first ("registered", the
# default); the network then starts from the projection, see model.unet)
VARIANTS = {
    "1-frame": {"time": 0, "slices": 0, "precontrast_frames": 0, "projection": False},
    "time-1": {"time": 1, "slices": 0, "precontrast_frames": 0, "projection": False},
    "time-2": {"time": 2, "slices": 0, "precontrast_frames": 0, "projection": False},
    "slices-1": {"time": 0, "slices": 1, "precontrast_frames": 0, "projection": False},
    "time-1+guide": {"time": 1, "slices": 0, "precontrast_frames": 3, "projection": False},
    "time-2+guide": {"time": 2, "slices": 0, "precontrast_frames": 3, "projection": False},
    "1-frame+global": {"time": 0, "slices": 0, "precontrast_frames": 0, "projection": "global"},
    "1-frame+local": {"time": 0, "slices": 0, "precontrast_frames": 0, "projection": "local"},
    "1-frame+registered": {"time": 0, "slices": 0, "precontrast_frames": 0, "projection": "registered"},
    "time-2+local": {"time": 2, "slices": 0, "precontrast_frames": 0, "projection": "local"},
    "time-1+guide+local": {"time": 1, "slices": 0, "precontrast_frames": 3, "projection": "local"},
}


def best_value(selection):
    """The selected epoch's validation value; run records written before the key was named best_value call it
    best_value_this_session."""
    return selection.get("best_value", selection.get("best_value_this_session"))


def run_variant(name, context, args):
    """main.py on the variant's context; its metrics.json plus the peak-enhancement error over the test lesions."""
    run_dir = Path(args.out) / name
    overrides = [f"model.context.{key}={value}" for key, value in context.items()]
    overrides += [f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}",
                  f"train.max_val_slices={args.max_val_slices}", f"train.max_eval_slices={args.max_eval_slices}",
                  f"train.target={args.target}"]
    cfg = load_config(ROOT / "configs" / "demo.yaml", overrides)
    evaluate_run(cfg, args.data, run_dir, {"train": train(cfg, args.data, run_dir)})
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["peak_enhancement_error"] = peak_enhancement_errors(run_dir, args.data)
    return metrics


def peak_enhancement_errors(run_dir, data_dir):
    """{"unet", "noisy"}: mean |peak relative enhancement - truth's| / truth's of the run's model and of the
    degraded input over every test lesion (benchmark_kinetics, as make benchmark scores it); {} without lesions."""
    from breastmri.evaluate.benchmark_kinetics import find_lesions, lesion_kinetics
    from breastmri.evaluate.benchmark_runs import load_model, read_run

    lesions, _ = find_lesions(data_dir, "test")
    if not lesions:
        return {}
    run = read_run(run_dir)
    result = lesion_kinetics(["noisy", "unet"], {"unet": (run, load_model(run))}, data_dir, lesions, {}, None)
    return {m: v["peak_enhancement_error"] for m, v in result["summary"].items()}


def budget(args):
    """What every variant of one table shares (a kept row must have had the same), the U-Net's width included
    (configs/demo.yaml's model.filters)."""
    from breastmri.config import load_config

    filters = load_config(ROOT / "configs" / "demo.yaml")["model"]["filters"]
    return {"epochs": args.epochs, "steps": args.steps, "max_val_slices": args.max_val_slices,
            "max_eval_slices": args.max_eval_slices, "data": str(args.data), "target": args.target,
            "filters": filters}


def row(name, context, metrics, args):
    ref = metrics.get("truth", metrics)
    ci = ref["patient_ci"]["masked"]
    gain = ci["gain"]["psnr"]
    return {"variant": name, "context": context, "reference": "truth" if "truth" in metrics else "3T",
            "body_psnr": ci["model"]["psnr"]["mean"], "body_psnr_ci": [ci["model"]["psnr"]["ci_low"],
                                                                       ci["model"]["psnr"]["ci_high"]],
            "body_ssim": ci["model"]["ssim"]["mean"], "input_body_psnr": ci["noisy_input"]["psnr"]["mean"],
            "gain": gain["mean"], "gain_ci": [gain["ci_low"], gain["ci_high"]],
            "val_body_psnr": best_value(metrics["train"]["selection"]),
            "train_seconds": metrics["train"]["seconds"], "n_slices": ref["n_slices"],
            "peak_enhancement_error": metrics["peak_enhancement_error"].get("unet"),
            "input_peak_enhancement_error": metrics["peak_enhancement_error"].get("noisy"),
            "n_patients": ref["n_patients"], "budget": budget(args)}


def markdown(rows, args):
    from breastmri.config import load_config
    from breastmri.restore.networks import context_channels

    lines = [f"Test patients, body mask, against the {rows[0]['reference']}; each variant {args.epochs} epochs x "
             f"{args.steps} steps of batch 16 (96 px crops, fresh noise), {rows[0]['n_slices']} test slices of "
             f"{rows[0]['n_patients']} patients; 95% t-interval over patient means.", "",
             "| context | channels | body PSNR (dB) | body SSIM | gain over input (dB) | peak enhancement error | "
             f"val body PSNR (target {args.target}) | training s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["context"]
        channels = context_channels(load_config(overrides=[{"model": {"context": c}}]))
        peak = r.get("peak_enhancement_error")
        lines.append(f"| {r['variant']} | {channels} | {r['body_psnr']:.2f} [{r['body_psnr_ci'][0]:.2f}, "
                     f"{r['body_psnr_ci'][1]:.2f}] | {r['body_ssim']:.3f} | {r['gain']:+.2f} [{r['gain_ci'][0]:+.2f}, "
                     f"{r['gain_ci'][1]:+.2f}] | {'-' if peak is None else f'{peak:.1%}'} | "
                     f"{r['val_body_psnr']:.2f} | {r['train_seconds']:.0f} |")
    peak = rows[0].get("input_peak_enhancement_error")
    lines.append(f"\nDegraded input: {rows[0]['input_body_psnr']:.2f} dB" +
                 ("." if peak is None else f", peak enhancement error {peak:.1%} (every test lesion)."))
    return "\n".join(lines)


def main(argv=None):
    from breastmri.config import DEFAULTS
    from breastmri.data.paired_checks import TARGETS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/processed_demo")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=30, help="training steps per epoch")
    p.add_argument("--max-val-slices", type=int, default=48)
    p.add_argument("--max-eval-slices", type=int, default=120)
    p.add_argument("--target", default=DEFAULTS["train"]["target"], choices=TARGETS,
                   help="train.target of every variant (rows kept by --keep must have had the same)")
    p.add_argument("--keep", action="store_true",
                   help="keep the rows of <out>/ablation.json for the variants not named in --variants (same settings, "
                        "same budget: rerun only what a change touched)")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        sys.exit(f"error: unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    out = Path(args.out)
    kept = []
    if args.keep and (out / "ablation.json").is_file():  # rows of variants not rerun, as long as they still mean that
        shared = budget(args)
        kept = [r for r in json.loads((out / "ablation.json").read_text())
                if r["variant"] not in names and VARIANTS.get(r["variant"]) == r["context"]
                # rows from before --target and before the demo's width was recorded: 3t, 16 filters
                and {"target": "3t", "filters": 16, **r.get("budget", {})} == shared]
    fresh = {name: row(name, VARIANTS[name], run_variant(name, VARIANTS[name], args), args) for name in names}
    by_name = {r["variant"]: r for r in kept} | fresh
    rows = [by_name[name] for name in VARIANTS if name in by_name]
    write_text_atomic(out / "ablation.json", json.dumps(rows, indent=1))
    text = markdown(rows, args)
    write_text_atomic(out / "ablation.md", text + "\n")
    print(text)
    return rows


if __name__ == "__main__":
    quiet_start()
    main()
