"""Evaluate a trained run on held-out patients: every model metric beside the degraded input's, same slices.

    evaluate_run(cfg, data_dir, run_dir)   # metrics.json, metrics_per_slice.csv, reconstructions.png

The test patients score (the validation patients only when the data has no test split, said so in the record),
against the 3T image and, where the data has it, the noise-free truth; self-supervised runs on magnitude data
get their Rician mean inverted first (training.needs_rician_correction).
"""

import json
import time

from breastmri.config import config_hash
from breastmri.data.splits import split_record
from breastmri.files import write_csv, write_text_atomic
from breastmri.restore.losses import load_model
from breastmri.restore.training import needs_rician_correction

# -----------------------------------------------------------------------------
# evaluation

def predict_slices(model, dataset, index, multiple, rician=False, sigma_cache=None, keeps=None):
    """[(noisy, clean or None, truth or None, pred)] of batch `index`, one tuple of float32 (rows, cols) per slice.

    The model runs on the stored grid through network_output (what enhance.py runs on a DICOM series: the change
    common to a slice position's frames taken back with keeps, networks.keeps_common; rician,
    needs_rician_correction: the Rician mean inverted). When the arrays were resized (preprocess.image_size), all
    four are mapped back to each slice's acquisition matrix with grid.unresize_square, which also drops the square
    padding: metrics are taken on the grid the images were acquired on, as enhance.py writes its output."""
    from breastmri.data.grid import unresize_square

    noisy, clean = dataset[index]  # noisy (B, H, W, C): the target slice first, then its context
    truth = dataset.truth_batch(index)
    rows = dataset.batch_rows(index)
    pred = network_output(model, noisy, rows, dataset, multiple, lambda row: rician, keeps,
                          {} if sigma_cache is None else sigma_cache)
    slices = []
    for j, row in enumerate(rows):
        images = (noisy[j, ..., 0], None if clean is None else clean[j, ..., 0],
                  None if truth is None else truth[j, ..., 0], pred[j])
        shape = (row.get("rows"), row.get("cols"))
        if None not in shape and noisy.shape[1:3] != shape:  # noisy is (B, H, W, C)
            images = tuple(None if a is None else unresize_square(a, shape) for a in images)
        slices.append(images)
    return slices


def network_output(model, inputs, rows, dataset, multiple, rician, keeps, cache):
    """The network's output for whole-slice inputs (B, H, W, C) of manifest `rows` of `dataset` -> float32
    (B, H, W), as enhance.py makes it for the same slices (enhancer.predict_stack), shared by main.py's evaluation
    and the benchmark:

    - keeps (networks.keeps_common: the projection channel; None: off): the change the network made alike in
      every frame of the slice's position is taken back (predict.common_change), measured on all the position's
      frames (PairedSlices.position_inputs), once per position;
    - rician (a function of the row: training.needs_rician_correction): the Rician mean inverted
      (denoisers.correct_rician_mean) with the noise of the slice's whole noisy series, measured as enhance.py
      measures it (noise.series_sigma with the series' layout).

    cache keeps the measurements and the positions' maps between calls (common_maps)."""
    from breastmri.data.manifest import _zero
    from breastmri.restore.denoisers import correct_rician_mean
    from breastmri.restore.predict import predict_padded

    maps = common_maps(model, rows, dataset, multiple, keeps, cache)
    pred = predict_padded(model, inputs, multiple, len(inputs))
    for j, row in enumerate(rows):
        if maps[j] is not None:
            pred[j] -= maps[j]
        if rician(row):
            pred[j] = correct_rician_mean(pred[j], _series_noise(dataset, row, cache), _zero(row))
    return pred


def common_maps(model, rows, dataset, multiple, keeps, cache):
    """[(H, W) or None] per row: predict.common_change of the row's slice position, from the network's output on
    every frame there (PairedSlices.position_inputs), once per position; None without keeps or with fewer than
    MIN_COMMON_FRAMES frames (a manifest without the layout columns reads as one frame per position). The
    benchmark calls it before it times a batch: enhance.py predicts every frame once anyway, so the maps are not
    inference time. cache keeps the maps of one series at a time (rows come series by series; a whole split's
    would not fit)."""
    from breastmri.data.manifest import _layout_of
    from breastmri.restore.predict import MIN_COMMON_FRAMES, common_change, predict_padded

    if keeps is None:
        return [None] * len(rows)
    maps = []
    for row in rows:
        key = ("common", row["noisy_file"], _layout_of(row)[1])
        if key not in cache:
            for old in [k for k in cache if k[0] == "common" and k[1] != row["noisy_file"]]:
                del cache[old]
            cache[key] = None
            position = dataset.position_inputs(row) if _layout_of(row)[2] >= MIN_COMMON_FRAMES else ()
            if len(position) >= MIN_COMMON_FRAMES:
                out = predict_padded(model, position, multiple, len(rows))
                cache[key] = common_change(out, position[..., keeps])
        maps.append(cache[key])
    return maps


def _series_noise(dataset, row, cache):
    """The noise of the row's whole noisy series (noise.series_sigma, with its layout, as enhance.py measures it),
    measured once per series."""
    from breastmri.data.manifest import _zero
    from breastmri.simulate.noise import series_sigma

    key = ("sigma", row["noisy_file"])
    if key not in cache:
        cache[key] = series_sigma(dataset.array(row["noisy_file"]), _zero(row), dataset.series_layout(row))[0]
    return cache[key]


def evaluate(model, dataset, multiple, n_examples=3, rician=False, keeps=None):
    """Metrics of the model output and of the degraded input, per slice of a whole-slice dataset.

    Against two references: the 3T image (columns of metrics.pair_metrics) and, when the data has it, the
    noise-free truth (the same columns prefixed "truth_"). Both use one body mask per slice, computed on the
    truth when there is one (it has no noise to threshold) and on the 3T image otherwise. Data without clean images
    (degrade.model none) has only the truth columns, or none at all (real 1.5T data: nothing to score against).
    Slices are predicted and scored as predict_slices says (enhance.py's path, acquisition grid; keeps: the common
    change taken back; rician: the Rician correction of self-supervised output). multiple: model.size_multiple.
    Returns (rows, examples): one dict per slice (manifest identity + metrics) and, for up to `n_examples`
    patients, the slice with the most tissue (arrays for reconstructions.png).
    """
    from breastmri.metrics import body_mask, pair_metrics

    rows, best, sigmas = [], {}, {}
    for b in range(len(dataset)):
        for meta, (n, c, t, p) in zip(dataset.batch_rows(b), predict_slices(model, dataset, b, multiple, rician,
                                                                             sigmas, keeps)):
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
    from breastmri.metrics import summarize

    summary = summarize(rows) if rows and all("model_psnr" in r for r in rows) else {}
    if rows and all("truth_model_psnr" in r for r in rows):
        summary["truth"] = summarize(rows, prefix="truth_")
    return summary


class NoHeldOutPatients(ValueError):
    """The data holds none of the patients asked for, nor the validation patients to fall back on."""


def scored_split(data_dir, wanted="test"):
    """The split to score: `wanted`, or the validation patients when the test patients were wanted and the data has
    none (said so: those numbers are not held out from the checkpoint selection). main.py's evaluation and the
    notebook choose alike. Raises ValueError when neither is there."""
    from breastmri.data.manifest import read_manifest

    present = {r["split"] for r in read_manifest(data_dir)}
    if wanted in present:
        return wanted
    if wanted == "test" and "val" in present:
        print(f"warning: {data_dir} has no test patients (preprocess.split); the numbers below are VALIDATION "
              "numbers, on the patients the checkpoint was selected on")
        return "val"
    raise NoHeldOutPatients(f"{data_dir} has no {wanted} patients (splits present: {sorted(present)})")


def score_split(model, cfg, data_dir, split, max_slices=None, n_examples=3):
    """(rows, examples, dataset): `model` scored on the patients of `split` as main.py's evaluation scores them, the
    notebook too: the run's context, the Rician correction of a self-supervised run's output, and the change common
    to a position's frames taken back (model.common_anatomy); evaluate's rows and examples."""
    from breastmri.data.paired import PairedSlices
    from breastmri.restore.networks import context_offsets, keeps_common, size_multiple

    dataset = PairedSlices(data_dir, split, batch_size=cfg["train"]["batch_size"], context=context_offsets(cfg),
                           max_slices=max_slices, seed=cfg["seed"])
    rician = needs_rician_correction(cfg, dataset.rows[0].get("degrade_model"))
    rows, examples = evaluate(model, dataset, size_multiple(cfg), n_examples=n_examples, rician=rician,
                              keeps=keeps_common(cfg))
    return rows, examples, dataset


def evaluate_run(cfg, data_dir, run_dir, extra=None, patients=None):
    """Score the run's model.keras on the test patients (on val when the data has no test patients, said so),
    and on the validation patients separately; write metrics.json, metrics_per_slice.csv and the figures."""
    from breastmri.data.manifest import read_manifest
    from breastmri.evaluate import figures
    from breastmri.metrics import format_table, json_safe
    from breastmri.restore.networks import keeps_common

    model_path = run_dir / "model.keras"
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} does not exist; train first (python main.py --run-dir {run_dir})")
    model = load_model(model_path)
    present = {r["split"] for r in read_manifest(data_dir)}
    split = scored_split(data_dir)
    start = time.perf_counter()
    rows, examples, test = score_split(model, cfg, data_dir, split, cfg["train"]["max_eval_slices"])
    rician, keeps = needs_rician_correction(cfg, test.rows[0].get("degrade_model")), keeps_common(cfg)
    seconds = time.perf_counter() - start
    summary = {"split": split, "model_name": cfg["model"]["name"], "mode": cfg["train"]["mode"],
               "data_dir": str(data_dir), "config_hash": config_hash(cfg)}
    if rows:
        write_csv(rows, run_dir / "metrics_per_slice.csv")
        summary.update(summarize_both(rows))
        summary.update({"common_anatomy": "network" if keeps is None else "projection",
                        "reference": "3T image (noisy); the 'truth' section: the noise-free signal (demo data only)"
                        if "model" in summary else "the noise-free truth only ('truth' section): the data has no "
                        "clean images (degrade.model none)",
                        "rician_correction": rician, "eval_seconds": round(seconds, 1),
                        "eval_ms_per_slice": round(1000 * seconds / len(rows), 1)})
        if split == "test" and "val" in present:
            summary["val"] = summarize_both(score_split(model, cfg, data_dir, "val", cfg["train"]["max_val_slices"],
                                                        n_examples=0)[0])
        summary["patients"] = (patients or split_record(data_dir))["patients"]
    else:
        summary["reference"] = None
        for stale in ("metrics_per_slice.csv", "reconstructions.png"):  # an earlier evaluation's, of other data
            (run_dir / stale).unlink(missing_ok=True)
        print(f"no reference to score against: {data_dir} has neither clean images (degrade.model none) nor a "
              "noise-free truth (demo data only); apply the model with enhance.py.")
    summary.update(extra or {})
    write_text_atomic(run_dir / "metrics.json", json.dumps(json_safe(summary), indent=2))
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
