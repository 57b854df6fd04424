"""breastmri/studies/headroom.py: the ceiling estimators run on a tiny split and rank as they must."""

import math

from breastmri.studies import headroom


def test_headroom_estimators_on_a_tiny_split(smoke_data):
    result = headroom.headroom(smoke_data, "test", bm3d_every=4)
    assert {"input", "projection", "oracle basis", "linear", "projection + BM3D"} <= set(result)
    assert all(math.isfinite(v.get("psnr", v.get("fraction"))) and v["frames"] > 0 for v in result.values())
    assert 0 < result["fine error energy"]["fraction"] < 1
    assert result["linear"]["frames"] == result["projection"]["frames"]  # every row on the same frames
    # knowing the truth's time courses can only help a block projection; every estimator beats the input
    assert result["oracle basis"]["psnr"] > result["projection"]["psnr"] > result["input"]["psnr"]
    assert result["linear"]["psnr"] > result["input"]["psnr"]
