"""Preprocessing across machines: each takes a share of the patients, one merge joins them.

    python preprocessing.py --dicom-root /data/QIN-BREAST --out data/part0 --shard 0/2     # machine 1
    python preprocessing.py --dicom-root /data/QIN-BREAST --out data/part1 --shard 1/2     # machine 2
    python preprocessing.py --merge data/part0 data/part1 --out data/processed             # anywhere, once

A patient's share is a hash of its PatientID (in_share), so every series of a patient is processed on one machine
and the shares do not depend on which other patients exist. The patient split (train / val / test) is a hash of
each patient alone too (splits.split_patients), so the merged manifest is the manifest one run over the whole tree
writes: the same rows in the same order (series are ordered by patient first), the same splits; tested.
"""

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

from breastmri.config import ConfigError
from breastmri.data.manifest import read_manifest, write_manifest
from breastmri.data.splits import SPLITS, check_patient_split
from breastmri.files import TMP_PREFIX, atomic_path, write_text_atomic


def parse_shard(text):
    """'i/n' -> (i, n) with 0 <= i < n; ConfigError otherwise."""
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: give i/n, e.g. 0/2") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard {text!r}: i must lie in [0, n)")
    return index, count


def in_share(patient_id, shard):
    """True when the patient belongs to share shard = (i, n) (every patient when shard is None)."""
    if shard is None:
        return True
    index, count = shard
    return int(hashlib.sha256(str(patient_id).encode()).hexdigest(), 16) % count == index


def merge(dirs, out_dir):
    """Join the outputs of preprocessing shards into out_dir: arrays linked (or copied), manifest.csv and
    summary.json of the whole. Refuses shards of other settings, missing or repeated shares, a patient in two
    shards. Returns the merged summary."""
    dirs, out = [Path(d) for d in dirs], Path(out_dir)
    summaries = []
    for d in dirs:
        path = d / "summary.json"
        if not path.is_file():
            raise ConfigError(f"--merge: {path} does not exist; preprocess that shard first")
        summaries.append(json.loads(path.read_text()))
    settings = {json.dumps([s["config_hash"], s["config"].get("seed"), s["config"].get("preprocess"),
                            s["config"].get("degrade")], sort_keys=True, default=str) for s in summaries}
    if len(settings) > 1:
        raise ConfigError("--merge: the shards were made with other settings (seed, preprocess or degrade differ)")
    shards = [tuple(s.get("shard") or (0, 1)) for s in summaries]
    counts = {n for _, n in shards}
    if len(counts) > 1 or sorted(i for i, _ in shards) != list(range(max(counts))):
        raise ConfigError(f"--merge: shares {['%d/%d' % s for s in shards]} are not each of 0/n .. n-1/n once")
    rows, owner = [], {}
    for d in dirs:
        for row in read_manifest(d):
            if owner.setdefault(row["patient_id"], d) != d:
                raise ConfigError(f"--merge: patient {row['patient_id']} is in {owner[row['patient_id']]} and {d}")
            rows.append(row)
    rows.sort(key=lambda r: r["patient_id"])  # stable: a single run orders its series by patient first
    check_patient_split(rows)
    (out / "arrays").mkdir(parents=True, exist_ok=True)
    for d in dirs:
        for source in (d / "arrays").iterdir():
            if source.name.startswith(TMP_PREFIX):  # what a killed preprocessing run left, not an array
                continue
            target = out / "arrays" / source.name
            if target.exists() and os.path.samefile(source, target):
                continue
            with atomic_path(target) as staged:  # a stale file of an earlier merge is replaced, never kept
                try:
                    os.link(source, staged)
                except OSError:  # another file system (or a leftover under the staged name): copy
                    shutil.copy2(source, staged)
    write_manifest(out / "manifest.csv", rows)
    summary = _merged_summary(summaries, rows, dirs, out)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def _merged_summary(summaries, rows, dirs, out):
    """One summary for the whole: what every shard saw of the tree (its index) from the first, what each made
    summed or joined."""
    first = summaries[0]
    merged = dict(first, out_dir=str(out), shard=None, merged_from=[str(d) for d in dirs])
    for key in ("files_used", "series_used", "series_processed", "series_reused", "slices", "series_with_truth",
                "series_with_masked_background"):
        merged[key] = sum(s.get(key, 0) for s in summaries)
    for key in ("dynamics", "sigma_disagreements"):
        merged[key] = [item for s in summaries for item in s.get(key, [])]
    for key in ("sigma_methods", "series_notes", "field_strengths_t"):
        merged[key] = dict(sum((Counter(s.get(key, {})) for s in summaries), Counter()))
    # what indexing skipped is the same in every shard (each reads the whole tree); what processing skipped
    # (unreadable pixels) is each shard's own
    processing = [Counter(s.get("series_skipped", {})) - Counter(first.get("series_skipped", {})) for s in summaries]
    merged["series_skipped"] = dict(Counter(first.get("series_skipped", {})) + sum(processing[1:], Counter()))
    patients = {name: sorted({p for s in summaries for p in s["patients_per_split"][name]}) for name in SPLITS}
    merged["patients_per_split"] = patients
    merged["patients"] = {name: len(p) for name, p in patients.items()}
    merged["slices_per_split"] = {name: sum(r["split"] == name for r in rows) for name in SPLITS}
    merged["seconds"] = sum(s.get("seconds", 0) for s in summaries)
    return merged
