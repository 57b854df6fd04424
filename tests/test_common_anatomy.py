"""model.common_anatomy: what a network changes alike in every frame of a slice position is taken back, so the
anatomy the frames share stays the projection's (predict.common_change, keep_common). The tie of enhance.py to
main.py's evaluation with it on is tests/test_one_grid.py."""

import numpy as np
import pytest

from breastmri.config import load_config, load_run_config, save_config
from breastmri.restore.denoisers import rician_bias_correction, rician_mean
from breastmri.restore.networks import keeps_common
from breastmri.restore.predict import MIN_COMMON_FRAMES, common_change, keep_common


def frames_of(rng, t=6, shape=(24, 20)):
    anatomy = rng.uniform(0.05, 1.0, shape).astype(np.float32)
    return anatomy, np.stack([anatomy * (1 + 0.3 * i / t) for i in range(t)])


def test_a_change_alike_in_every_frame_is_taken_back_and_what_differs_is_kept():
    rng = np.random.default_rng(0)
    _, projection = frames_of(rng)
    common = rng.normal(0, 0.05, projection.shape[1:]).astype(np.float32)     # e.g. edges the prior rewrote
    own = rng.normal(0, 0.02, projection.shape).astype(np.float32)
    own -= own.mean(axis=0)                                                     # what differs between frames
    sigma, ratio = 0.02, 0.5
    target = rician_mean(rician_bias_correction(projection, sigma), sigma * ratio)  # the target's noise floor
    pred = target + common + own
    inputs = np.stack([pred, projection], axis=-1)
    out = keep_common(pred.copy(), inputs, [list(range(len(pred)))], 1, sigma, ratio)
    np.testing.assert_allclose(out, target + own, atol=1e-5)
    np.testing.assert_allclose(common_change(pred, projection, sigma, ratio), common, atol=1e-5)


def test_the_noise_floor_is_moved_and_zero_is_respected():
    rng = np.random.default_rng(1)
    _, projection = frames_of(rng)
    # a network that returns its projection unchanged keeps the input's noise floor; against a target with half the
    # noise that is a change in every frame (largest in the dark), which the floor model says and takes back
    sigma = 0.05
    change = common_change(projection, projection, sigma, 0.5)
    assert change.min() > 0 and change.max() < sigma
    # no floor to move (gaussian data): the plain difference; and an offset zero gives the same as zero at 0
    assert np.allclose(common_change(projection + 0.1, projection, sigma, None), 0.1, atol=1e-6)
    pred = projection + 0.01
    inputs = np.stack([projection], axis=-1)
    shifted = keep_common(pred.copy() + 0.2, inputs + 0.2, [list(range(len(pred)))], 0, sigma, 0.5, zero=0.2) - 0.2
    np.testing.assert_allclose(shifted, keep_common(pred.copy(), inputs, [list(range(len(pred)))], 0, sigma, 0.5),
                               atol=1e-5)


def test_positions_with_too_few_frames_are_left_alone():
    rng = np.random.default_rng(2)
    _, projection = frames_of(rng, t=MIN_COMMON_FRAMES + 1)
    pred = projection + 0.1
    inputs = projection[..., None]
    out = keep_common(pred.copy(), inputs, [[0, 1], [2, 3]], 0, 0.0, None)   # two positions of two frames
    np.testing.assert_array_equal(out, pred)
    out = keep_common(pred.copy(), inputs, [[0, 1, 2], [3]], 0, 0.0, None)
    np.testing.assert_allclose(out[:3], projection[:3], atol=1e-6)
    np.testing.assert_array_equal(out[3], pred[3])


def test_config_default_old_runs_and_bad_values(tmp_path):
    assert keeps_common(load_config()) is None                          # the default: the network's output
    on = ["model.common_anatomy=projection"]
    cfg = load_config(overrides=on)
    channel, ratio = keeps_common(cfg)
    assert channel == 1 and ratio == pytest.approx(0.5)                 # frame + guarded projection; 1.5T / 3T
    assert keeps_common(load_config(overrides=on + ["model.context.projection=false"])) is None  # nothing to keep
    assert keeps_common(load_config(overrides=on + ["train.target=truth"]))[1] == 0.0
    assert keeps_common(load_config(overrides=on + ["train.mode=noise2void"]))[1] == 1.0
    with pytest.raises(ValueError, match="common_anatomy"):
        keeps_common(load_config(overrides=["model.common_anatomy=mean"]))
    # a run saved before the key existed was evaluated on the network's output as it is, and still is
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text().replace("  common_anatomy: projection\n", "")
    assert "common_anatomy" not in text
    (tmp_path / "config.yaml").write_text(text)
    assert keeps_common(load_run_config(tmp_path / "config.yaml")) is None
