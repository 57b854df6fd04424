"""One setup trained with several seeds, scored on the same test slices beside the methods it must beat.

    python -m breastmri.studies.seeds --seeds runs/demo runs/demo_seed1 runs/demo_seed2 \
        --against runs/demo/bench_nordic/benchmark_per_slice.csv runs/demo/bench_headline/benchmark_per_slice.csv \
        --methods noisy,nordic,tpca --out runs/seeds_demo

--seeds: one score per seed, either a main.py run dir (its metrics_per_slice.csv, the model's columns) or a
benchmark_per_slice.csv of benchmark.py (its `unet` rows). --against: benchmark_per_slice.csv files whose other
methods (the degraded input, tpca, NORDIC, ...) are the comparison. Every source must have scored the very same
slices, matched by (series_uid, slice_index); that is asserted, not assumed.

The score is body PSNR against the noise-free truth (the headline's). The table gives each seed's mean [95%
t-interval over patient means], the mean over seeds, and each compared method with the paired difference per
patient: the U-Net's patient mean averaged over the seeds, minus the method's patient mean, t-interval over the
patients; per seed too, so the spread the seeds add is in view. The intervals are over patients, for these seeds:
the spread between seeds is not in them (its std is reported beside them). A slice that a source could not score
(NaN: no body in it) is left out of every source. Writes <out>/seeds.md and seeds.json.
"""

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from breastmri.evaluate.benchmark_report import ci_cell
from breastmri.files import write_text_atomic
from breastmri.metrics import group_means, mean_ci
from breastmri.runtime import add_verbose_flag, quiet_start

MODEL = "unet"  # the benchmark's name of the run it was given


def slice_scores(source, method=MODEL, rows=None):
    """{(series_uid, slice_index): (patient_id, body PSNR vs truth)} of `method` in `source`: a main.py run dir
    (method "unet" reads the model's column, "noisy" the input's) or a benchmark_per_slice.csv (`rows`: its rows,
    when they were read already)."""
    source = Path(source)
    if source.is_dir():
        column = {MODEL: "truth_model_masked_psnr", "noisy": "truth_noisy_masked_psnr"}[method]
        rows, source = _read(source / "metrics_per_slice.csv"), source / "metrics_per_slice.csv"
    else:
        rows = [r for r in (_read(source) if rows is None else rows) if r["method"] == method]
        column = "truth_masked_psnr"
    if not rows or column not in rows[0]:
        raise ValueError(f"{source}: no {method} rows with {column} (a run against the noise-free truth?)")
    scores = {(r["series_uid"], int(r["slice_index"])): (r["patient_id"], float(r[column])) for r in rows}
    if len(scores) != len(rows):
        raise ValueError(f"{source}: {len(rows) - len(scores)} {method} rows score a slice scored before")
    return scores


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def patient_means(scores):
    """{patient_id: mean score over its slices}."""
    return group_means([v for _, v in scores.values()], [p for p, _ in scores.values()])


def ci_of(by_patient, patients):
    return mean_ci([by_patient[p] for p in patients])


def compare(seeds, against, only=None):
    """The study's numbers against the methods named in `only` (None: every method of `against`): {"slices",
    "patients", "seeds": [{"source", "psnr", "minus": {method: ci}}], "mean_over_seeds": {"psnr", "minus": {method:
    ci}}, "methods": {method: {"source", "psnr"}}, "seed_spread"}."""
    seed_scores = [(str(s), slice_scores(s)) for s in seeds]
    first = seed_scores[0][1]
    methods = {}
    for path in against:
        rows = _read(path)
        for method in dict.fromkeys(r["method"] for r in rows if r["method"] != MODEL):
            if only is None or method in only:
                scores = slice_scores(path, method, rows)
                if method in methods and methods[method][1] != scores:
                    raise ValueError(f"{method} scores differ between {methods[method][0]} and {path}")
                methods.setdefault(method, (str(path), scores))
    if only is not None and set(only) - set(methods):
        raise ValueError(f"no rows of {', '.join(sorted(set(only) - set(methods)))} in {', '.join(map(str, against))}")
    sources = seed_scores + list(methods.values())
    for name, scores in sources:
        if set(scores) != set(first):
            raise ValueError(f"{name} scored {len(set(scores) ^ set(first))} slices the first seed did not (or the "
                             f"reverse): every source must score the same slices")
        if any(scores[k][0] != first[k][0] for k in first):
            raise ValueError(f"{name} names the patients of the first seed's slices otherwise")
    # a slice without a score in any source (NaN: no body in it) leaves every source, so all average the same slices
    dropped = {k for _, scores in sources for k, (_, value) in scores.items() if np.isnan(value)}
    for _, scores in sources:
        for k in dropped:
            del scores[k]
    keys = set(first)
    patients = sorted({p for p, _ in first.values()})
    seed_means = [patient_means(scores) for _, scores in seed_scores]
    over_seeds = {p: float(np.mean([m[p] for m in seed_means])) for p in patients}
    method_means = {m: patient_means(scores) for m, (_, scores) in methods.items()}

    def minus(model):
        return {m: ci_of({p: model[p] - means[p] for p in patients}, patients) for m, means in method_means.items()}

    return {"slices": len(keys), "dropped_without_score": len(dropped), "patients": patients,
            "seeds": [{"source": name, "psnr": ci_of(means, patients), "minus": minus(means)}
                      for (name, _), means in zip(seed_scores, seed_means)],
            "mean_over_seeds": {"psnr": ci_of(over_seeds, patients), "minus": minus(over_seeds)},
            "seed_spread": float(np.std([ci_of(m, patients)["mean"] for m in seed_means], ddof=1))
            if len(seed_means) > 1 else float("nan"),
            "methods": {m: {"source": source, "psnr": ci_of(method_means[m], patients)}
                        for m, (source, _) in methods.items()}}


def markdown(result):
    methods = list(result["methods"])
    head = ["", "body PSNR vs truth (dB)"] + [f"minus {m}, paired per patient" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for seed in result["seeds"]:
        lines.append(f"| U-Net (`{seed['source']}`) | {ci_cell(seed['psnr'], 2)} | "
                     + " | ".join(ci_cell(seed["minus"][m], 2, sign=True) for m in methods) + " |")
    mean = result["mean_over_seeds"]
    lines.append(f"| **U-Net, mean over seeds** | **{ci_cell(mean['psnr'], 2)}** | "
                 + " | ".join(f"**{ci_cell(mean['minus'][m], 2, sign=True)}**" for m in methods) + " |")
    for m, info in result["methods"].items():
        lines.append(f"| {m} (`{info['source']}`) | {ci_cell(info['psnr'], 2)} |" + " |" * len(methods))
    return "\n".join(lines + ["", f"{result['slices']} slices of {len(result['patients'])} patients (left out, without "
                              f"a score in some source: {result['dropped_without_score']}); intervals over patients; "
                              f"the spread of the seeds' means (std): {result['seed_spread']:.2f} dB."])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", nargs="+", required=True, help="main.py run dirs or benchmark_per_slice.csv files")
    p.add_argument("--against", nargs="+", required=True, help="benchmark_per_slice.csv files")
    p.add_argument("--methods", help="the compared methods, comma-separated (default: every method of --against)")
    p.add_argument("--out", required=True)
    add_verbose_flag(p)
    args = p.parse_args(argv)
    only = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    result = compare(args.seeds, args.against, only)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    write_text_atomic(out / "seeds.json", json.dumps(result, indent=1))
    write_text_atomic(out / "seeds.md", text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    quiet_start()
    main()
