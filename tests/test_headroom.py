"""breastmri/studies/headroom.py: the ceiling estimators run on a tiny split and rank as they must."""

import math

from breastmri.studies import headroom


def test_headroom_estimators_on_a_tiny_split(smoke_data):
    result = headroom.headroom(smoke_data, "test", bm3d_every=4)
    assert {"input", "projection", "oracle basis", "linear", "projection + BM3D"} <= set(result)
    assert all(math.isfinite(v.get("psnr", v.get("fraction"))) and v["frames"] > 0 for v in result.values())
    assert 0 < result["fine error energy"]["fraction"] < 1
    assert result["linear"]["frames"] == result["projection"]["frames"]  # every row on the same frames
    # No ranking is asserted: on this 64 px, 3-frame phantom the breathing chest inflates the projection's noise
    # level (docs/limits.md), the projection scores below its input, and the estimators built on it or fitted on
    # 2 training patients need not beat it either. They are achievable estimators, lower bounds on what is possible.
    assert result["input"]["frames"] == result["projection"]["frames"] == result["oracle basis"]["frames"]
