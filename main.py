"""Train a restoration model on the pairs preprocessing.py wrote, then evaluate it honestly.

    python main.py --epochs 10                              # default residual U-Net on data/processed
    python main.py --config configs/thesis.yaml             # the 2021 thesis, reproduced
    python main.py --run-dir runs/unet --eval-only          # evaluate a trained model again
    python main.py --run-dir runs/unet --resume --epochs 20 # continue an interrupted (or finished) run

A run dir receives: config.yaml (resolved), split.json (the patients of each split and the manifest's
hash), model.keras (the epoch with the best body-masked validation PSNR), history.csv, logs/
(TensorBoard), backup/ (state for --resume), loss_curve.png, reconstructions.png,
metrics_per_slice.csv and metrics.json.

Honest by construction: the checkpoint is selected on the validation patients and the numbers are
reported on the test patients, who took no part in training or selection (metrics.json says
"split": "test"; the validation figures sit under "val"). Every model metric is reported next to
the same metric for the degraded input, over the whole image and over the body mask, against the
3T image and, when the data has it (demo data), against the noise-free truth ("truth" section).
--eval-only and --resume refuse data whose split differs from the one the run recorded.
"""

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from breastmri.runtime import add_verbose_flag, quiet_start, setup_devices

if __name__ == "__main__":
    quiet_start()  # before the imports below load TensorFlow, whose start-up lines it keeps off the terminal

from breastmri.config import ConfigError, load_config, load_run_config
from breastmri.data.splits import SplitMismatch, check_split_record
from breastmri.evaluate.evaluation import NoHeldOutPatients, evaluate_run
from breastmri.restore.multiworker import is_chief, tf_config
from breastmri.restore.networks import keeps_common
from breastmri.restore.training import train

DEFAULT_DATA = "data/processed"


def recorded_data(run_dir, args):
    """The data an existing run was evaluated on (its metrics.json's data_dir), for --eval-only and --resume
    without --data; None otherwise."""
    metrics = Path(run_dir) / "metrics.json"
    if not (args.eval_only or args.resume) or not metrics.is_file():
        return None
    recorded = json.loads(metrics.read_text()).get("data_dir")
    if recorded:
        print(f"data: {recorded} (the run's metrics.json; --data to choose another)")
    return recorded


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML file with the settings that differ from config.DEFAULTS")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set model.name=thesis_autoencoder (repeatable)")
    p.add_argument("--epochs", type=int, help="overrides train.epochs")
    p.add_argument("--data", help="output dir of preprocessing.py (default data/processed; for --eval-only and "
                                   "--resume the data the run was evaluated on, metrics.json's data_dir)")
    p.add_argument("--run-dir", help="where the run is written (default runs/<model name>)")
    p.add_argument("--eval-only", action="store_true", help="evaluate the run's model.keras, no training")
    p.add_argument("--resume", action="store_true", help="continue from the run's last saved epoch")
    p.add_argument("--worker-hosts", help="multi-worker training: host:port of every worker, comma-separated, the "
                                          "same on every worker (writes TF_CONFIG, sets train.distribute "
                                          "multi_worker)")
    p.add_argument("--task-index", type=int, help="multi-worker training: this worker's index in --worker-hosts")
    add_verbose_flag(p)
    return p.parse_args(argv)


# What a run's model is and what it learned: --resume and --eval-only take them from the run, never from a
# --config or --set (a resume that rebuilt the network differently could not load its own state, and an
# evaluation would score the run as something it is not).
FIXED_BY_THE_RUN = (("model",), ("train", "mode"), ("train", "target"))


def resolve_config(args):
    """Config file (or, when resuming/evaluating without one, the run's own config.yaml) + overrides; ConfigError
    when a resumed or evaluated run would get other FIXED_BY_THE_RUN settings than it was trained with."""
    overrides = list(args.set)
    if args.epochs is not None:
        overrides.append({"train": {"epochs": args.epochs}})
    saved = Path(args.run_dir) / "config.yaml" if (args.resume or args.eval_only) and args.run_dir else None
    if saved is None or not saved.is_file():
        return load_config(args.config, overrides)
    run_cfg = load_run_config(saved)  # as the run was trained, keys added since included (config.ADDED_LATER)
    cfg = load_config(overrides=[run_cfg, *overrides]) if args.config is None else load_config(args.config,
                                                                                               overrides)
    trained = load_config(overrides=[run_cfg])
    for keys in FIXED_BY_THE_RUN:
        now, then = cfg, trained
        for key in keys:
            now, then = now[key], then[key]
        if now != then:
            raise ConfigError(f"{'.'.join(keys)} differs from the run's {saved} ({then!r}, here {now!r}): "
                              f"--resume and --eval-only use the run's own; drop the --config or --set that "
                              f"changes it, or train a new run")
    return cfg


def main(argv=None):
    args = parse_args(argv)
    try:
        if (args.worker_hosts is None) != (args.task_index is None):
            raise ConfigError("--worker-hosts and --task-index go together")
        if args.worker_hosts is not None:
            os.environ["TF_CONFIG"] = tf_config(args.worker_hosts.split(","), args.task_index)
        if os.environ.get("TF_CONFIG") and not args.eval_only:  # one worker of several (multiworker.py)
            args.set.append("train.distribute=multi_worker")
        cfg = resolve_config(args)
        keeps_common(cfg)  # model.common_anatomy checked before training, not after it
    except (ConfigError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    run_dir = Path(args.run_dir or f"runs/{cfg['model']['name']}")
    data_dir = Path(args.data or recorded_data(run_dir, args) or DEFAULT_DATA)
    if args.eval_only and not (run_dir / "model.keras").is_file():
        print(f"error: {run_dir}/model.keras not found: --eval-only evaluates a trained run (give its --run-dir)",
              file=sys.stderr)
        sys.exit(2)
    if not (data_dir / "manifest.csv").is_file():
        print(f"error: {data_dir}/manifest.csv not found; give --data the output dir of preprocessing.py, or run "
              f"`python preprocessing.py --out {data_dir}` first", file=sys.stderr)
        sys.exit(2)

    extra = None
    try:
        if args.eval_only:
            check_split_record(run_dir, data_dir)
        else:
            extra = {"train": train(cfg, data_dir, run_dir, resume=args.resume)}
    except SplitMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (FloatingPointError, ValueError) as e:
        sys.exit(f"error: {e}")
    if cfg["train"]["distribute"] == "multi_worker" and not is_chief():
        return None  # the chief evaluates and writes the run; this worker's copy is gone
    if args.eval_only:  # one process evaluates, whatever the run was trained with
        distribute = cfg["train"]["distribute"]
        setup_devices({**cfg["train"], "distribute": "none" if distribute == "multi_worker" else distribute})
        previous = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
        if "train" in previous:
            extra = {"train": previous["train"]}  # keep the training figures
    try:
        return evaluate_run(cfg, data_dir, run_dir, extra)
    except NoHeldOutPatients as e:
        sys.exit(f"error: {e}: nothing held out to evaluate on")


def main_of_worker(argv=None):
    """main() for one worker of several: the process ends when main() does. TensorFlow's collective runtime keeps
    threads that would hold a finished or failed worker alive (and its peers waiting), so the exit is immediate,
    with the exit status main() meant."""
    code = 0
    try:
        main(argv)
    except SystemExit as end:
        if isinstance(end.code, str):
            print(end.code, file=sys.stderr)
        code = end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
    except BaseException:  # noqa: BLE001 - report, then end the process whatever happened
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    if os.environ.get("TF_CONFIG") or "--worker-hosts" in sys.argv:
        main_of_worker()
    main()
