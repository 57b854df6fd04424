"""breastmri/studies/ablation.py's table bookkeeping: --keep reruns only the named variants and keeps the rows that still mean the
same thing (same context, same budget). Training itself is main.py's, tested in test_main.py; here each variant's
run is replaced by a fixed metrics dict so the test is about which rows the table keeps."""

import json

from breastmri.config import load_config
from breastmri.studies import ablation


def _metrics(psnr):
    stat = {"mean": psnr, "ci_low": psnr - 1, "ci_high": psnr + 1}
    masked = {"model": {"psnr": stat, "ssim": {"mean": 0.9}}, "noisy_input": {"psnr": {"mean": 27.0}},
              "gain": {"psnr": stat}}
    return {"truth": {"patient_ci": {"masked": masked}, "n_slices": 4, "n_patients": 2},
            "train": {"selection": {"best_value": psnr}, "seconds": 1.0},
            "peak_enhancement_error": {"unet": 0.01, "noisy": 0.012}}


def test_keep_reruns_only_the_named_variants_and_drops_rows_that_changed_meaning(tmp_path, monkeypatch):
    runs = []
    monkeypatch.setattr(ablation, "run_variant", lambda name, context, args: runs.append(name) or _metrics(30.0))
    out = ["--out", str(tmp_path)]
    ablation.main([*out, "--variants", "1-frame,time-1"])
    saved = json.loads((tmp_path / "ablation.json").read_text())
    saved[1]["context"] = {**saved[1]["context"], "projection": True}   # a row whose settings changed since
    (tmp_path / "ablation.json").write_text(json.dumps(saved))
    runs.clear()
    rows = ablation.main([*out, "--variants", "1-frame+local", "--keep"])
    assert runs == ["1-frame+local"]
    assert [r["variant"] for r in rows] == ["1-frame", "1-frame+local"]     # time-1 no longer means that row
    rows = ablation.main([*out, "--variants", "1-frame+local", "--keep", "--epochs", "2"])
    assert [r["variant"] for r in rows] == ["1-frame+local"]                 # another budget: nothing kept
    assert rows[0]["budget"]["epochs"] == 2
    rows = ablation.main([*out, "--variants", "1-frame", "--keep", "--epochs", "2", "--target", "3t"])
    assert [r["variant"] for r in rows] == ["1-frame"]                       # another target: nothing kept
    assert rows[0]["budget"]["target"] == "3t"
    saved = json.loads((tmp_path / "ablation.json").read_text())
    for r in saved:
        del r["budget"]["filters"]  # as a row written before the width was recorded reads
    (tmp_path / "ablation.json").write_text(json.dumps(saved))
    rows = ablation.main([*out, "--variants", "time-1", "--keep", "--epochs", "2", "--target", "3t"])
    demo_filters = load_config(ablation.ROOT / "configs" / "demo.yaml")["model"]["filters"]
    assert rows[0]["budget"]["filters"] == demo_filters
    # a row without the width was trained 16 wide: kept only while the demo's U-Net still is
    assert [r["variant"] for r in rows] == (["1-frame", "time-1"] if demo_filters == 16 else ["time-1"])
