"""DICOM tree -> paired (clean, degraded) slice arrays + manifest.csv + summary.json.

    python preprocessing.py                                   # the embedded demo tree -> data/processed
    python preprocessing.py --dicom-root /data/QIN-BREAST --out data/processed --workers 2
    python preprocessing.py --config configs/demo.yaml --out data/processed_demo
    python preprocessing.py --benchmark [--dicom-root DIR] [--workers 2]   # slices/s and peak memory

Every file's header is read; series that are not magnitude MR images are skipped with a counted reason; each
kept series is degraded to a simulated lower field (degrade.*), normalized, and written with its manifest rows.
An interrupted run resumes. The steps, in order: breastmri/data/preprocess.py.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from breastmri.config import ConfigError, load_config
from breastmri.data.preprocess import PreprocessError, benchmark, demo_root, run
from breastmri.data.shards import merge, parse_shard
from breastmri.runtime import add_verbose_flag, quiet_start


def main(argv=None):
    parser = argparse.ArgumentParser(description="DICOM tree -> paired clean/degraded slice arrays + manifest.")
    parser.add_argument("--dicom-root", help="folder with the DICOM tree (default: the embedded demo tree)")
    parser.add_argument("--out", default="data/processed", help="output folder (default data/processed)")
    parser.add_argument("--config", help="YAML file with the settings that differ from config.DEFAULTS")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set preprocess.image_size=256 (repeatable)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--shard", help="i/n: only the i-th of n shares of the patients (one machine of n; join the "
                                        "outputs with --merge)")
    parser.add_argument("--merge", nargs="+", metavar="DIR", help="join the --out folders of --shard runs into --out")
    parser.add_argument("--benchmark", action="store_true",
                        help="preprocess into a temporary folder inside --out and print slices/s and peak memory")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.workers < 1:
            raise ConfigError(f"--workers is {args.workers}; give 1 or more")
        if args.merge:
            summary = merge(args.merge, args.out)
            print(f"{summary['slices']} slices of {summary['series_used']} series from {len(args.merge)} shards; "
                  f"patients train {summary['patients']['train']} / val {summary['patients']['val']} / test "
                  f"{summary['patients']['test']} -> {args.out}")
            return
        cfg = load_config(args.config, args.set)
        root = Path(args.dicom_root) if args.dicom_root else demo_root(cfg)
        if args.benchmark:
            print(json.dumps(benchmark(root, cfg, workers=args.workers, out_dir=args.out), indent=2))
            return
        summary = run(root, args.out, cfg, workers=args.workers,
                      shard=parse_shard(args.shard) if args.shard else None)
    except (PreprocessError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    skipped = sum(summary["series_skipped"].values())
    print(f"{summary['slices']} slices of {summary['series_used']} series ({summary['series_reused']} reused) "
          f"from {summary['files_used']} of {summary['files_seen']} files; patients train "
          f"{summary['patients']['train']} / val {summary['patients']['val']} / test {summary['patients']['test']}; "
          f"{skipped} series and "
          f"{sum(summary['files_skipped'].values())} files skipped; {summary['seconds']:.1f} s -> {args.out}")


if __name__ == "__main__":
    quiet_start()
    main()
