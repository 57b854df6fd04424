"""Training losses and metrics, registered with Keras so a saved model.keras reloads with them.

The registration package name ("mri_enhance") is part of every saved model; it must not change, or models written
before would no longer load.
"""

import math

import numpy as np

from breastmri.config import ConfigError


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


def pixel_loss(err, loss_name):
    """The training loss per pixel of an error array, in numpy (what get_loss averages): validation scores with it."""
    return {"mse": err ** 2, "mae": np.abs(err), "mse+mae": err ** 2 + np.abs(err)}[loss_name]


def load_model(model_path):
    """A model.keras written by train(), without its optimizer (compile=False). The custom loss and metric of
    this module are registered first; enhance.py, benchmark.py and the notebook load models through here."""
    import keras

    get_loss("mse+mae"), psnr_metric()
    return keras.models.load_model(model_path, compile=False)
