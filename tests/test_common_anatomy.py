"""model.common_anatomy: what a network changes alike in every frame of a slice position is taken back, less what
follows the signal level alone (the noise floor it learned), so the anatomy the frames share stays the
projection's (predict.common_change, keep_common). The tie of enhance.py to main.py's evaluation with it on is
tests/test_one_grid.py."""

import numpy as np
import pytest
from scipy import ndimage

from breastmri.config import load_config, load_run_config, save_config
from breastmri.restore.networks import keeps_common
from breastmri.restore.predict import MIN_COMMON_FRAMES, common_change, keep_common


def position(rng, t=8, shape=(48, 40)):
    """A static anatomy (smooth levels with edges) in t frames of rising contrast: the projection of a position."""
    tissue = ndimage.gaussian_filter(rng.uniform(0, 1, shape), 3)
    anatomy = np.where(tissue > np.median(tissue), 0.8, 0.2) + 0.05 * rng.uniform(0, 1, shape)
    return np.stack([anatomy * (1 + 0.3 * i / t) for i in range(t)]).astype(np.float32)


def test_anatomy_changed_alike_in_every_frame_is_taken_back_and_what_differs_is_kept():
    rng = np.random.default_rng(0)
    projection = position(rng)
    own = rng.normal(0, 0.02, projection.shape).astype(np.float32)
    own -= own.mean(axis=0)                                      # what differs between the frames
    rewritten = ndimage.gaussian_filter(rng.normal(0, 1, projection.shape[1:]), 1.0)  # anatomy rewritten alike
    rewritten = (0.05 * rewritten / rewritten.std()).astype(np.float32)                 # in every frame
    pred = projection + own + rewritten
    out = keep_common(pred.copy(), projection[..., None], [list(range(len(pred)))], 0)
    error_before = np.mean((pred - projection - own) ** 2)
    error_after = np.mean((out - projection - own) ** 2)
    assert error_after < 0.1 * error_before                      # taken back
    np.testing.assert_allclose(out - out.mean(0), pred - pred.mean(0), atol=1e-6)  # frame differences kept


def test_a_change_that_follows_the_signal_level_is_kept():
    rng = np.random.default_rng(1)
    projection = position(rng)
    # a lower noise floor learned: darker pixels move down more, by the level alone
    floor = -0.05 * np.exp(-projection.mean(axis=0) / 0.2)
    pred = projection + floor
    change = common_change(pred, projection)
    assert np.abs(change).max() < 0.1 * np.abs(floor).max()
    np.testing.assert_allclose(keep_common(pred.copy(), projection[..., None], [list(range(len(pred)))], 0), pred,
                               atol=0.1 * np.abs(floor).max())


def test_positions_with_too_few_frames_are_left_alone():
    rng = np.random.default_rng(2)
    projection = position(rng, t=MIN_COMMON_FRAMES + 1)
    pred = projection + rng.normal(0, 0.05, projection.shape[1:]).astype(np.float32)
    out = keep_common(pred.copy(), projection[..., None], [[0, 1], [2, 3]], 0)   # two positions of two frames
    np.testing.assert_array_equal(out, pred)
    out = keep_common(pred.copy(), projection[..., None], [[0, 1, 2], [3]], 0)
    assert not np.allclose(out[:3], pred[:3])
    np.testing.assert_array_equal(out[3], pred[3])


def test_config_default_old_runs_and_bad_values(tmp_path):
    assert keeps_common(load_config()) == 1                             # the default: frame + guarded projection
    assert keeps_common(load_config(overrides=["model.common_anatomy=network"])) is None
    on = ["model.common_anatomy=projection"]
    assert keeps_common(load_config(overrides=on + ["model.context.projection=false"])) is None  # nothing to keep
    with pytest.raises(ValueError, match="common_anatomy"):
        keeps_common(load_config(overrides=["model.common_anatomy=mean"]))
    # a run saved before the key existed was evaluated on the network's output as it is, and still is
    save_config(load_config(overrides=on), tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text().replace("  common_anatomy: projection\n", "")
    assert "common_anatomy" not in text
    (tmp_path / "config.yaml").write_text(text)
    assert keeps_common(load_run_config(tmp_path / "config.yaml")) is None


def test_a_bad_value_is_refused_before_training_and_before_enhancing(tmp_path, capsys):
    import main
    from breastmri.enhance.enhancer import load_enhancer
    from breastmri.restore.predict import EnhanceError

    with pytest.raises(SystemExit) as end:
        main.main(["--set", "model.common_anatomy=mean", "--data", str(tmp_path), "--run-dir", str(tmp_path)])
    assert end.value.code == 2 and "common_anatomy" in capsys.readouterr().err
    save_config(load_config(overrides=["model.common_anatomy=mean"]), tmp_path / "config.yaml")
    (tmp_path / "model.keras").write_bytes(b"")
    with pytest.raises(EnhanceError, match="common_anatomy"):
        load_enhancer(tmp_path / "model.keras")
