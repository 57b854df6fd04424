"""Training across processes and machines: tf.distribute.MultiWorkerMirroredStrategy, configured by TF_CONFIG.

    python main.py --config configs/demo.yaml --worker-hosts 10.0.0.1:12345,10.0.0.2:12345 --task-index 0   # host 1
    python main.py --config configs/demo.yaml --worker-hosts 10.0.0.1:12345,10.0.0.2:12345 --task-index 1   # host 2
    python -m breastmri.restore.multiworker --workers 2 -- --config configs/demo.yaml --run-dir runs/multiworker

Every worker runs the same main.py; TF_CONFIG (written from --worker-hosts / --task-index, or set by the cluster,
see docs/training.md) tells each which it is. Worker 0 is the chief: it writes the run directory (checkpoints,
history, metrics, figures); the others write theirs to temporary folders that are removed at the end, and skip the
evaluation. Each worker keeps its own BackupAndRestore state (<run-dir>/backup/worker-<i>), so --resume resumes
every worker where it stopped.

Data sharding, by sample (train.shard: sample): every worker builds the same global batch of train.batch_size
samples (the same rows, in the same seeded order) and makes only its share of it, with random streams per sample
(PairedSlices' shard), so a step of n workers is the step a single process takes with that global batch; the
gradients are averaged over the workers. The launcher below starts n local workers on free loopback ports, for
the demo and the tests.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STRATEGY_NAME = "multi_worker_mirrored"
SHARDS = ("sample",)


def tf_config(hosts, index):
    """The TF_CONFIG JSON of worker `index` among `hosts` ("host:port" each)."""
    hosts = [h.strip() for h in hosts if h.strip()]
    if len(hosts) < 1 or not 0 <= index < len(hosts):
        raise ValueError(f"--task-index {index} is not one of the {len(hosts)} --worker-hosts")
    for host in hosts:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"--worker-hosts: {host!r} is not host:port")
    return json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": int(index)}})


def worker_task():
    """(task index, number of workers) from TF_CONFIG, or (0, 1) without one. A cluster with a "chief" task (as
    Vertex AI and Kubeflow write it) counts the chief as task 0 and its workers after it."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster, task = config.get("cluster", {}), config.get("task", {})
    chiefs = len(cluster.get("chief", []))
    index = int(task.get("index", 0)) + (chiefs if task.get("type", "worker") == "worker" else 0)
    return index, max(1, chiefs + len(cluster.get("worker", [])))


def is_chief():
    return worker_task()[0] == 0


def distributed_dataset(strategy, dataset, start_epoch, example):
    """A tf.distribute dataset over this worker's share of `dataset` (a PairedSlices with its shard set): batches
    of epoch start_epoch, start_epoch + 1, ... in order, endless (fit counts the steps of each epoch). Built per
    worker with distribute_datasets_from_function, so tf.data does not shard it a second time. example: one
    (inputs, targets) batch of it, for the shapes."""
    import numpy as np
    import tensorflow as tf

    inputs, targets = example
    signature = (tf.TensorSpec((None,) + inputs.shape[1:], tf.float32),
                 tf.TensorSpec((None,) + targets.shape[1:], tf.float32))

    def batches():
        epoch = start_epoch
        while True:
            dataset.epoch = epoch
            for index in range(len(dataset)):
                x, y = dataset[index]
                yield np.asarray(x, np.float32), np.asarray(y, np.float32)
            epoch += 1

    def per_worker(context):
        data = tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return data.with_options(options)

    return strategy.distribute_datasets_from_function(per_worker)


def prepare_for_workers(model, strategy, example):
    """Build the compiled model's loss, metric and optimizer state from one local (inputs, targets) batch, before
    fit().

    Keras 3.15's fit builds them from the first batch of a distributed dataset, which it first reduces across the
    workers with strategy.reduce; MultiWorkerMirroredStrategy cannot reduce the (inputs, targets) tuple and fit fails
    ("Attempt to convert a value (PerReplica ...) to a Tensor"). Built here from this worker's own first batch (the
    shapes are what matter), that step has nothing left to do and is skipped."""
    with strategy.scope():
        model._symbolic_build(data_batch=example)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    _reduce_scalar_logs_across_workers()


def _reduce_scalar_logs_across_workers():
    """Keras 3.15 averages a step's logs (loss, metrics: scalars) across workers with strategy.reduce(..., axis=0),
    which fails on a scalar ("Invalid reduction dimension 0 for input with 0 dimensions";
    tensorflow/tensorflow#72388). The mean over the replicas of a scalar is strategy.reduce(..., axis=None): the step function
    looks reduce_per_replica up at call time, so this wraps it for multi-worker strategies only."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = getattr(tf_trainer.reduce_per_replica, "__wrapped__", tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None) if getattr(v, "shape", None) is not None
                and len(v.shape) == 0 else original(v, strategy, reduction), values)
        return original(values, strategy, reduction)

    reduce_per_replica.__wrapped__ = original
    tf_trainer.reduce_per_replica = reduce_per_replica


# --------------------------------------------------------------------------------------------------------------
# The local launcher: n workers on loopback, each a main.py process
# --------------------------------------------------------------------------------------------------------------

def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (bound and released: the usual small race, retried by the caller)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def launch(workers, main_args, timeout_s=1800, log_dir=None):
    """Run main.py with main_args as `workers` processes on 127.0.0.1 and wait for all of them. Returns the exit
    codes. A worker that fails, or the timeout, stops the others: every process ends."""
    hosts = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    procs, logs = [], []
    for index in range(workers):
        env = dict(os.environ, TF_CONFIG=tf_config(hosts, index))
        log = None
        if log_dir is not None and index > 0:  # the chief prints to the terminal, the others to a file each
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            log = open(Path(log_dir) / f"worker-{index}.log", "w")
            logs.append(log)
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "main.py"), *main_args], env=env, cwd=ROOT,
                                      stdout=log, stderr=subprocess.STDOUT if log else None))
    deadline = time.monotonic() + timeout_s
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    return [p.returncode for p in procs]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train with n local workers on 127.0.0.1 "
                                                 "(MultiWorkerMirroredStrategy); arguments after -- go to main.py.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds before every worker is stopped")
    parser.add_argument("--log-dir", help="where the non-chief workers log (default: <run-dir>/workers)")
    parser.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then main.py's arguments")
    args = parser.parse_args(argv)
    main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    run_dir = main_args[main_args.index("--run-dir") + 1] if "--run-dir" in main_args else "runs/multiworker"
    codes = launch(args.workers, main_args, args.timeout, args.log_dir or Path(run_dir) / "workers")
    print(f"workers ended with exit codes {codes}")
    if any(codes):
        sys.exit(1)


if __name__ == "__main__":
    from breastmri.runtime import quiet_start

    quiet_start()
    main()
