"""The realism statistics (breastmri/evaluate/realism.py) read back what a synthetic series was made with."""

import numpy as np
import pytest

from breastmri.evaluate.realism import breast_region, statistics
from breastmri.simulate.noise import shaped_noise, spectrum_correlation, zero_filled_spectrum


def _series(spectrum=None, sigma=10.0, n=12, size=96, seed=0):
    """A torso entering from the bottom edge with a breast above it, constant over time for 4 frames, then
    enhancing by 50%; complex noise of sigma (shaped by spectrum), magnitude."""
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size) ** 2 / (0.6 * size) ** 2 + (xx - size / 2) ** 2 / (0.4 * size) ** 2) < 1
    signal = np.where(body, 300.0, 0.0)
    level = np.array([1.0] * 4 + [1.5] * (n - 4))
    clean = level[:, None, None] * signal[None]
    real, imag = shaped_noise(clean.shape, spectrum, np.random.default_rng(seed))
    return np.hypot(clean + sigma * real, sigma * imag), body


def test_statistics_of_white_noise():
    frames, body = _series()
    region = breast_region(frames)
    assert region.sum() > 0 and not region[-1].any()  # the chest wall side (the bottom edge) is left out
    s = statistics(frames, times_s=np.arange(12) * 16.4)
    assert s["snr"] == pytest.approx(300 / 10, rel=0.1)
    assert s["noise_correlation"] == pytest.approx([0, 0], abs=0.05)
    assert s["frames_before_contrast"] == 4 and s["spacing_s"] == pytest.approx(16.4)
    assert s["largest_shift_px"] < 0.2
    assert s["detail_kurtosis"] == pytest.approx(3, abs=0.5)  # the mean frame's detail is Gaussian noise


def test_fine_detail_kurtosis_tells_sparse_structure_from_texture():
    """The same body filled with a Gaussian texture or crossed by a few thin vessels of the same detail power: the
    first reads about 3, the second far more."""
    from scipy import ndimage

    frames, body = _series(sigma=1.0)
    rng = np.random.default_rng(3)
    texture = ndimage.gaussian_filter(rng.standard_normal(body.shape), 1.0)
    vessels = np.zeros(body.shape)
    vessels[60, :] = vessels[45:55, 40] = 1.0  # the region (rows 43-65 once eroded) crossed by two
    kurtosis = {}
    for name, detail in (("texture", texture), ("vessels", vessels)):
        detail = 30 * detail / detail[body].std()
        kurtosis[name] = statistics(frames + np.where(body, detail, 0)[None])["detail_kurtosis"]
    assert kurtosis["texture"] < 4 < 8 < kurtosis["vessels"], kurtosis


def test_statistics_of_correlated_noise():
    spectrum = zero_filled_spectrum(96, 96, (0.5, 0.58))
    frames, _ = _series(spectrum)
    s = statistics(frames)
    assert s["noise_correlation"] == pytest.approx(spectrum_correlation(spectrum), abs=0.08)
    assert s["snr"] == pytest.approx(30, rel=0.15)


def test_realism_table_puts_generated_patients_and_their_median_beside_a_series(tmp_path):
    """demo_data.py --realism: the same statistics for a series folder and for generated patients, then their
    median; here the 'real' folder is itself a generated tree, so its column equals its patient's."""
    import demo_data
    from breastmri.simulate.demo_tree import make_demo_tree

    params = dict(patients=1, seed=0, slices=3, time_points=6, matrix=64)
    make_demo_tree(tmp_path / "series", **params)
    first_visit = sorted((tmp_path / "series").rglob("*dynamic*"))[0]
    text = demo_data.realism_table(first_visit, dict(params, extras=False), patients=2)
    lines = text.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[2:] == ["patient 1", "patient 2", "demo_data.py median (3 slices x 6 time points)"]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]] for line in lines[2:]}
    assert rows["time points"] == ["6"] * 4
    assert rows["SNR in the breast"][0] == rows["SNR in the breast"][1]  # the folder is patient 1's tree


def test_realism_of_a_folder_without_a_dynamic_is_a_usage_error(tmp_path, capsys):
    """One time point's folder of a DCE stored one series per time point (the layout the README names) ended in a
    ValueError traceback, and so did a path that is not there: both are one-line usage errors now."""
    from dicom_fixtures import write_mr_series

    import demo_data

    write_mr_series(tmp_path / "one_time_point", "P1", n_slices=2, rows=8, cols=8)
    for folder in (tmp_path / "one_time_point", tmp_path / "missing"):
        with pytest.raises(SystemExit) as end:
            demo_data.main(["--realism", str(folder)])
        assert end.value.code == 2
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err, err
