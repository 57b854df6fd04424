"""model.py: shapes over odd sizes, the thesis architecture, residual identity at init, one training step,
size checks and the analytic FLOP count."""

import runpy
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from breastmri.config import load_config
from breastmri.restore.networks import (
    check_input_size,
    count_flops,
    get_model,
    size_multiple,
)


def config(*overrides):
    """DEFAULTS for a single-slice model (the default context adds channels; tests/test_context.py covers them)."""
    return load_config(overrides=["model.context.time=0", "model.context.precontrast_frames=0",
                                  "model.context.projection=false", *overrides])


@pytest.mark.parametrize("h, w", [(64, 64), (96, 64), (128, 96)])
def test_unet_output_shape(h, w):
    cfg = config()  # default: unet, depth 3, 32 filters
    check_input_size(cfg, h, w)
    model = get_model(cfg)
    out = model.predict(np.zeros((2, h, w, 1), np.float32), verbose=0)
    assert out.shape == (2, h, w, 1) and out.dtype == np.float32


def test_unet_rejects_sizes_that_do_not_divide_the_multiple():
    cfg = config()
    assert size_multiple(cfg) == 8
    with pytest.raises(ValueError, match=r"60x64.*multiples of 8.*pad to 64x64"):
        check_input_size(cfg, 60, 64)
    cfg4 = config("model.depth=4")
    assert size_multiple(cfg4) == 16
    with pytest.raises(ValueError, match="multiples of 16"):
        check_input_size(cfg4, 64, 72)


def thesis(*overrides, size=256):
    return config("model.name=thesis_autoencoder", f"preprocess.image_size={size}", *overrides)


@pytest.mark.parametrize("pools, size", [(8, 256), (4, 64), (4, 48), (2, 64), (2, 36)])
def test_thesis_autoencoder_shape_and_size_rule(pools, size):
    cfg = thesis(f"model.pools={pools}", size=size)
    assert size_multiple(cfg) == 2 ** pools
    check_input_size(cfg, size, size)
    model = get_model(cfg)
    assert model.input_shape == (None, size, size, 1)
    out = model.predict(np.random.default_rng(0).random((1, size, size, 1), np.float32), verbose=0)
    assert out.shape == (1, size, size, 1)
    assert out.min() > 0 and out.max() < 1  # sigmoid output (the default)
    with pytest.raises(ValueError, match=f"exactly {size}x{size}"):
        check_input_size(cfg, 2 * size, 2 * size)


@pytest.mark.parametrize("pools, bad", [(8, 64), (8, 100), (4, 40), (2, 30)])
def test_thesis_autoencoder_rejects_sizes_off_the_rule(pools, bad):
    with pytest.raises(ValueError, match=f"multiple of {2 ** pools}"):
        get_model(thesis(f"model.pools={pools}", size=bad))
    with pytest.raises(ValueError, match=f"multiple of {2 ** pools}"):
        check_input_size(thesis(f"model.pools={pools}", size=bad), bad, bad)


@pytest.mark.parametrize("pools, size", [(8, 256), (4, 64), (2, 32)])
def test_thesis_autoencoder_structure(pools, size):
    model = get_model(thesis(f"model.pools={pools}", size=size))
    kinds = [type(layer).__name__ for layer in model.layers]
    every = 8 // pools
    # encoder: (Conv2D x every, MaxPooling2D) x pools; decoder: (UpSampling2D, Conv2D x every) x pools; sigmoid
    encoder = (["Conv2D"] * every + ["MaxPooling2D"]) * pools
    decoder = (["UpSampling2D"] + ["Conv2D"] * every) * pools
    assert kinds == ["InputLayer"] + encoder + decoder + ["Activation"]
    assert kinds.count("Conv2D") == 16 and kinds.count("MaxPooling2D") == kinds.count("UpSampling2D") == pools
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs[:8]] == [16, 16, 32, 32, 64, 64, 128, 128]
    assert [c.filters for c in convs[8:]] == [128, 128, 64, 64, 32, 32, 16, 1]
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert all(c.activation.__name__ == "relu" for c in convs[:-1])
    assert convs[-1].activation.__name__ == "linear"
    assert model.layers[-1].activation.__name__ == "sigmoid"
    assert not any(isinstance(layer, (keras.layers.Concatenate, keras.layers.Add)) for layer in model.layers)
    bottleneck = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)][-1]
    assert bottleneck.output.shape == (None, size // 2 ** pools, size // 2 ** pools, 128)


def test_thesis_autoencoder_linear_output_and_bad_options():
    model = get_model(thesis("model.pools=4", "model.output_activation=linear", size=32))
    assert model.layers[-1].activation.__name__ == "linear"
    with pytest.raises(ValueError, match="model.output_activation must be one of sigmoid, linear"):
        get_model(thesis("model.output_activation=tanh"))
    with pytest.raises(ValueError, match="model.pools must be one of 8, 4, 2"):
        get_model(thesis("model.pools=3"))


@pytest.mark.parametrize("pools, size", [(8, 256), (4, 32), (2, 32)])
def test_thesis_autoencoder_one_training_step_lowers_the_loss(pools, size):
    keras.utils.set_random_seed(0)
    model = get_model(thesis(f"model.pools={pools}", size=size))
    yy, xx = np.mgrid[:size, :size] / size
    clean = np.stack([np.sin(3 * xx + k) * np.cos(2 * yy) * 0.4 + 0.5 for k in range(2)])[..., None]
    clean = clean.astype(np.float32)
    noisy = (clean + np.random.default_rng(0).normal(0, 0.05, clean.shape)).astype(np.float32)
    model.compile(keras.optimizers.Adam(1e-4), "mse")  # the thesis' rate (1e-3 overshoots the literal reading)
    before = model.evaluate(noisy, clean, verbose=0)
    model.train_on_batch(noisy, clean)
    assert model.evaluate(noisy, clean, verbose=0) < before


def test_unet_is_identity_at_init_and_one_training_step_lowers_the_loss():
    keras.utils.set_random_seed(0)
    model = get_model(config("model.filters=8", "model.depth=2"))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32] / 32
    clean = np.stack([np.sin(3 * xx + k) * np.cos(2 * yy) * 0.4 + 0.5 for k in range(4)])[..., None]
    clean = clean.astype(np.float32)
    noisy = (clean + rng.normal(0, 0.1, clean.shape)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(noisy, verbose=0), noisy)  # zero-init correction
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    before = float(np.mean((model.predict(noisy, verbose=0) - clean) ** 2))
    for _ in range(3):
        model.train_on_batch(noisy, clean)
    after = float(np.mean((model.predict(noisy, verbose=0) - clean) ** 2))
    assert after < before


def test_get_model_is_seeded():
    a = get_model(config("model.filters=4", "model.depth=1", "seed=3"))
    b = get_model(config("model.filters=4", "model.depth=1", "seed=3"))
    c = get_model(config("model.filters=4", "model.depth=1", "seed=4"))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])


def test_mixed_precision_output_is_float32():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        for cfg in (config("model.filters=4", "model.depth=1"),
                    config("model.name=thesis_autoencoder", "preprocess.image_size=256"),
                    config("model.name=thesis_autoencoder", "model.pools=4", "preprocess.image_size=64")):
            model = get_model(cfg)
            assert model.layers[1].compute_dtype == "float16"
            assert model.outputs[0].dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_bad_model_config_errors():
    with pytest.raises(ValueError, match="unknown model.name 'resnet'"):
        get_model(config("model.name=resnet"))
    with pytest.raises(ValueError, match="model.depth must be a positive integer"):
        get_model(config("model.depth=0"))


def test_count_flops_matches_hand_computation():
    inputs = keras.Input((9, 9, 2))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)            # 9*9 out px * 3*3*2 in * 4 out
    x = keras.layers.Conv2D(3, 3, strides=2, padding="valid")(x)      # 4*4 out px * 3*3*4 * 3
    x = keras.layers.MaxPooling2D(1)(x)                              # not counted
    x = keras.layers.Conv2DTranspose(5, 2, strides=2)(x)              # 4*4 in px * 2*2*3 * 5
    x = keras.layers.Conv2D(1, 1)(x)                                 # 8*8 out px * 5 * 1
    model = keras.Model(inputs, x)
    macs = 81 * 18 * 4 + 16 * 36 * 3 + 16 * 12 * 5 + 64 * 5
    assert count_flops(model, 9, 9) == 2 * macs


def test_count_flops_of_a_tiny_unet_and_scaling():
    model = get_model(config("model.filters=4", "model.depth=1"))
    # 8x8 input: enc1 two convs at 8x8 (1->4, 4->4), bottleneck at 4x4 (4->8, 8->8), transposed conv 4x4 px
    # 8->4 with a 2x2 kernel, dec1 convs at 8x8 (8->4 after concatenation, 4->4), 1x1 correction 4->1
    macs = (64 * 9 * 1 * 4 + 64 * 9 * 4 * 4 + 16 * 9 * 4 * 8 + 16 * 9 * 8 * 8 + 16 * 4 * 8 * 4
            + 64 * 9 * 8 * 4 + 64 * 9 * 4 * 4 + 64 * 4 * 1)
    assert count_flops(model, 8, 8) == 2 * macs
    assert count_flops(model, 16, 24) == 6 * count_flops(model, 8, 8)  # conv cost is linear in the area
    thesis_model = get_model(config("model.name=thesis_autoencoder", "preprocess.image_size=256"))
    assert count_flops(thesis_model, 256, 256) > 0
    with pytest.raises(ValueError, match="takes 256x256 inputs"):
        count_flops(thesis_model, 512, 512)
    # fewer pools keep more of the work at full resolution
    flops = [count_flops(get_model(config("model.name=thesis_autoencoder", f"model.pools={p}",
                                          "preprocess.image_size=256")), 256, 256) for p in (8, 4, 2)]
    assert flops[0] < flops[1] < flops[2]


def test_cli_literal_thesis_config_shows_eight_pools_and_upsamplings(monkeypatch, capsys):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(sys, "argv", ["model.py", "--config", str(root / "configs/thesis_literal.yaml"),
                                      "--set", "preprocess.image_size=256"])
    runpy.run_path(str(root / "model.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert out.count("MaxPooling2D") == 8 and out.count("UpSampling2D") == 8
    assert "multiples of 256" in out


def test_cli_prints_summary_params_and_flops(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["model.py", "--set", "model.filters=4", "--set", "model.depth=1",
                                      "--set", "preprocess.image_size=64"])
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "model.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "Total params" in out
    model = get_model(load_config(overrides=["model.filters=4", "model.depth=1"]))  # the CLI's own defaults
    assert f"{model.count_params():,} parameters" in out
    assert f"{count_flops(model, 64, 64) / 1e9:.2f} GFLOPs per 64x64 slice" in out
