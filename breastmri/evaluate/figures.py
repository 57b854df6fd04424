"""The figures every step writes: loss curve (thesis Fig. 14) and reconstruction panels (thesis Figs. 11-13).

Plotting lives here so main.py, the notebook and enhance.py draw the same pictures the same way.
Images are normalized slices (H, W) in [0, 1]-ish units; they are shown on one fixed gray scale so
degraded, clean and reconstructed can be compared by eye.
"""

import csv
from pathlib import Path

import numpy as np

from breastmri.files import save_figure_atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(history_csv, out_png, title="Training and validation loss"):
    """history.csv (Keras CSVLogger) -> loss/val_loss against epoch, as the thesis' Fig. 14."""
    plt = _pyplot()
    with open(history_csv) as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("loss", "training"), ("val_loss", "validation")):
        if rows and key in rows[0]:
            ax.plot(epochs, [float(r[key]) for r in rows], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_figure_atomic(fig, out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)


def plot_reconstructions(examples, out_png, vmax=1.0, error_vmax=0.2):
    """One row per example: degraded | clean 3T | [noise-free truth] | reconstructed | absolute error.

    examples: list of dicts with arrays "noisy", "clean" (or None), "pred" (H, W), optional "truth" (H, W) and optional
    "title", "noisy_metrics" and "pred_metrics" ({"psnr", "ssim"} shown under the panels). With a truth the
    error panel and the metrics are against the truth (the caller computes them so), else against the 3T image.
    """
    plt = _pyplot()
    n = len(examples)
    columns = 5 if any("truth" in ex for ex in examples) else 4
    fig, axes = plt.subplots(n, columns, figsize=(3 * columns, 3.1 * n), squeeze=False)
    for row, ex in zip(axes, examples):
        reference, name = (ex["truth"], "truth") if "truth" in ex else (ex["clean"], "clean")
        error = np.abs(ex["pred"] - reference)
        panels = [(ex["noisy"], "degraded", ex.get("noisy_metrics"))]
        if ex.get("clean") is not None:  # none for degrade.model none (the scan is the input)
            panels.append((ex["clean"], "clean (3T)", None))
        if "truth" in ex:
            panels.append((ex["truth"], "noise-free truth", None))
        panels += [(ex["pred"], "reconstructed", ex.get("pred_metrics")), (error, f"|reconstructed - {name}|", None)]
        for ax, (img, label, m) in zip(row, panels):
            is_error = img is error
            ax.imshow(img, cmap="magma" if is_error else "gray", vmin=0, vmax=error_vmax if is_error else vmax)
            if m is not None:
                label += f"\nPSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.3f}" + (" (vs truth)" if "truth" in ex else "")
            ax.set_title(label, fontsize=9)
            ax.axis("off")
        for ax in row[len(panels):]:
            ax.axis("off")
        if ex.get("title"):
            row[0].text(-0.05, 0.5, ex["title"], transform=row[0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
