"""breastmri/studies/seeds.py: seeds of one setup against the benchmark's methods, paired per patient."""

import csv

import pytest

from breastmri.studies import seeds

SLICES = [("p1", "s1", 0), ("p1", "s1", 1), ("p2", "s2", 0), ("p3", "s3", 0)]


def write_run(run_dir, model, noisy):
    """A main.py run dir whose metrics_per_slice.csv holds the given body PSNRs against the truth."""
    run_dir.mkdir()
    with open(run_dir / "metrics_per_slice.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["patient_id", "series_uid", "slice_index", "truth_model_masked_psnr",
                               "truth_noisy_masked_psnr"])
        w.writeheader()
        for (p, s, i), m, n in zip(SLICES, model, noisy):
            w.writerow({"patient_id": p, "series_uid": s, "slice_index": i, "truth_model_masked_psnr": m,
                        "truth_noisy_masked_psnr": n})
    return run_dir


def write_benchmark(path, scores, slices=SLICES):
    """A benchmark_per_slice.csv with one row per method and slice."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["method", "patient_id", "series_uid", "slice_index", "truth_masked_psnr"])
        w.writeheader()
        for method, values in scores.items():
            for (p, s, i), v in zip(slices, values):
                w.writerow({"method": method, "patient_id": p, "series_uid": s, "slice_index": i,
                            "truth_masked_psnr": v})
    return path


def test_paired_differences_average_the_seeds_per_patient_first(tmp_path):
    noisy = [30, 30, 31, 32]
    a = write_run(tmp_path / "a", [36, 38, 38, 40], noisy)  # patient means 37, 38, 40
    b = write_run(tmp_path / "b", [37, 39, 39, 40], noisy)  # 38, 39, 40
    bench = write_benchmark(tmp_path / "b.csv", {"noisy": noisy, "nordic": [37, 37, 38, 41], "unet": [0, 0, 0, 0]})
    result = seeds.main(["--seeds", str(a), str(b), "--against", str(bench), "--out", str(tmp_path / "out")])
    assert set(result["methods"]) == {"noisy", "nordic"}  # the benchmark's own U-Net rows are not a comparison
    mean = result["mean_over_seeds"]
    assert mean["psnr"]["mean"] == pytest.approx((37.5 + 38.5 + 40) / 3)
    # over seeds per patient 37.5, 38.5, 40 against NORDIC 37, 38, 41
    assert mean["minus"]["nordic"]["mean"] == pytest.approx((0.5 + 0.5 - 1) / 3)
    assert result["seeds"][1]["minus"]["nordic"]["mean"] == pytest.approx((1 + 1 - 1) / 3)
    assert result["seed_spread"] == pytest.approx(abs((37 + 38 + 40) / 3 - (38 + 39 + 40) / 3) / 2 ** 0.5)
    assert (tmp_path / "out" / "seeds.md").read_text().count("| U-Net (") == 2


def test_a_source_of_other_slices_is_refused(tmp_path):
    a = write_run(tmp_path / "a", [36, 38, 38, 40], [30, 30, 31, 32])
    other = [("p1", "s1", 0), ("p1", "s1", 2), ("p2", "s2", 0), ("p3", "s3", 0)]
    bench = write_benchmark(tmp_path / "b.csv", {"nordic": [37, 37, 38, 41]}, slices=other)
    with pytest.raises(ValueError, match="same slices"):
        seeds.compare([a], [bench])


def test_only_the_methods_named_are_compared_and_a_missing_one_is_refused(tmp_path):
    a = write_run(tmp_path / "a", [36, 38, 38, 40], [30, 30, 31, 32])
    bench = write_benchmark(tmp_path / "b.csv", {"nordic": [37, 37, 38, 41], "nordic_gauss": [36, 36, 37, 40]})
    assert list(seeds.compare([a], [bench], only=["nordic"])["methods"]) == ["nordic"]
    with pytest.raises(ValueError, match="no rows of bm4d"):
        seeds.compare([a], [bench], only=["nordic", "bm4d"])


def test_a_slice_without_a_score_leaves_every_source_and_its_patient_stays(tmp_path):
    a = write_run(tmp_path / "a", [36, float("nan"), 38, 40], [30, 30, 31, 32])
    bench = write_benchmark(tmp_path / "b.csv", {"nordic": [37, 39, 38, 41]})
    result = seeds.compare([a], [bench])
    assert result["slices"] == 3 and result["dropped_without_score"] == 1
    assert result["seeds"][0]["minus"]["nordic"]["n"] == 3  # p1 kept, scored on its one slice with a score
    assert result["seeds"][0]["minus"]["nordic"]["mean"] == pytest.approx((-1 + 0 - 1) / 3)


def test_conflicting_sources_are_refused(tmp_path):
    a = write_run(tmp_path / "a", [36, 38, 38, 40], [30, 30, 31, 32])
    one = write_benchmark(tmp_path / "one.csv", {"noisy": [30, 30, 31, 32]})
    other = write_benchmark(tmp_path / "other.csv", {"noisy": [30, 30, 31, 33]})
    with pytest.raises(ValueError, match="scores differ"):
        seeds.compare([a], [one, other])
    relabelled = [("p9", "s1", 0), ("p1", "s1", 1), ("p2", "s2", 0), ("p3", "s3", 0)]
    with pytest.raises(ValueError, match="patients"):
        seeds.compare([a], [write_benchmark(tmp_path / "r.csv", {"nordic": [1, 2, 3, 4]}, slices=relabelled)])
    doubled = write_benchmark(tmp_path / "d.csv", {"unet": [1, 2, 3, 4]}, slices=[SLICES[0]] * 4)
    with pytest.raises(ValueError, match="scored before"):
        seeds.slice_scores(doubled)
