"""The process around the library: quiet start-up, devices and precision, memory, worker processes.

Every command calls quiet_start() before TensorFlow loads; training calls setup_devices() before it creates its
first tensor; datasets call keep_freed_memory() once per process; the benchmark spreads its classical runs over the
cores with parallel_map().
"""

import functools
import importlib.abc
import importlib.util
import os
import sys

from breastmri.config import ConfigError


def quiet_start(argv=None):
    """Keep TensorFlow's C++ start-up lines off the terminal unless the command's arguments hold --verbose.

    On a CPU machine TensorFlow writes absl's pre-initialization warning, oneDNN and CUDA-stub notes while it is
    imported, and `failed call to cuInit: INTERNAL: CUDA error` when it first looks for devices: none of them is a
    failure. TF_CPP_MIN_LOG_LEVEL=3 silences what comes after the import; the import itself writes before that
    variable is read, so it runs with the process's stderr (file descriptor 2) pointed at /dev/null. That happens
    when something first imports TensorFlow (a hook on the import system), so a command that never needs it
    never loads it. Python errors are not lost: an exception propagates after stderr is restored. Returns True
    when it silenced."""
    argv = sys.argv[1:] if argv is None else argv
    if "--verbose" in argv:
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))
    return True


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds one top-level module as usual and runs its import with file descriptor 2 on /dev/null."""

    def __init__(self, name):
        self.name = name

    def find_spec(self, name, path, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)  # once: the real finders locate it, and later imports are plain
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            self.loader.exec_module(module)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def add_verbose_flag(parser):
    """--verbose on a command's parser (quiet_start reads it from sys.argv before argparse runs)."""
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's C++ start-up and device logging")
    return parser


# -----------------------------------------------------------------------------
# devices: must run before TensorFlow creates its first tensor

def setup_devices(train_cfg):
    """Pick the tf.distribute strategy and precision policy from the config and what TF sees.

    auto: one device -> default strategy; more than one GPU -> MirroredStrategy over all of them.
    mirrored: MirroredStrategy even on one device, over GPUs or, without GPUs, over `cpu_devices`
    logical CPUs (that is how the multi-device path is tested on a laptop).
    """
    import keras
    import tensorflow as tf

    n_cpu = int(train_cfg["cpu_devices"])
    if n_cpu > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n_cpu)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)

    if train_cfg["mixed_precision"]:
        if gpus:
            keras.mixed_precision.set_global_policy("mixed_float16")
        else:
            print("mixed_precision: no GPU visible, training in float32")

    mode = train_cfg["distribute"]
    if mode not in ("auto", "mirrored", "none", "multi_worker"):
        raise ConfigError(f"train.distribute must be auto, mirrored, none or multi_worker, not {mode!r}")
    if mode == "multi_worker":  # the cluster comes from TF_CONFIG; ring all-reduce works on CPUs and GPUs alike
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError("train.distribute multi_worker needs TF_CONFIG (main.py --worker-hosts and --task-index "
                              "write it)")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        devices = list(strategy.extended.worker_devices)
    else:
        devices = [d.name for d in tf.config.list_logical_devices("GPU" if gpus else "CPU")]
        several = mode == "mirrored" or (mode == "auto" and len(gpus) > 1)
        strategy = tf.distribute.MirroredStrategy(devices=devices) if several else tf.distribute.get_strategy()
    name = "MultiWorkerMirroredStrategy" if mode == "multi_worker" else type(strategy).__name__  # TF: Collective...
    print(f"devices: {', '.join(devices)} | strategy: {name} "
          f"({strategy.num_replicas_in_sync} replica(s)) | precision: {keras.mixed_precision.global_policy().name}")
    return strategy


# -----------------------------------------------------------------------------
# memory

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory():
    """Let glibc keep freed memory for reuse (a no-op elsewhere): the threshold for returning freed heap memory to
    the system 1 GiB, for serving a request by its own mmap 32 MiB (glibc's largest).

    TensorFlow sets the first to 128 KiB when Keras iterates a PyDataset ("Memory patch applied: M_TRIM_THRESHOLD"),
    and every sample here allocates and frees arrays of a few MiB (its frames, their spectra, the projection's
    blocks): each was then handed back to the kernel and zero-filled again on the next sample. On the demo's
    training that was 36 s of 55 s of system time per 30 steps; with this, 1 s, and the steps 1.5x faster
    (measured on 2 cores). Called before every batch, because TensorFlow's setting comes after the dataset's
    creation."""
    mallopt = _mallopt()
    if mallopt is not None:
        mallopt(M_TRIM_THRESHOLD, 1 << 30)
        mallopt(M_MMAP_THRESHOLD, 1 << 25)


@functools.cache
def _mallopt():
    """glibc's mallopt, or None where there is none."""
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def parallel_map(fn, jobs, workers=None):
    """[fn(job) for job in jobs], `workers` (default: the machine's cores) at a time in spawned processes, each
    with one BLAS / OpenMP thread; in this process when one worker or one job would do. fn must be a function of
    a module (the workers import it; spawned, they share nothing with this process, TensorFlow included). The
    workers are started once per process and kept for later calls. For the benchmark's classical runs, which use
    about one core each: a run timed inside fn takes its own time."""
    jobs = list(jobs)
    workers = min(os.cpu_count() or 1, len(jobs)) if workers is None else min(workers, len(jobs))
    if workers < 2:
        return [fn(job) for job in jobs]
    return list(_pool(workers).map(fn, jobs))


@functools.lru_cache(maxsize=None)
def _pool(workers):
    """A pool of `workers` spawned processes with one BLAS / OpenMP thread each (the variables are read as each
    worker starts, which is when the pool is made)."""
    import concurrent.futures
    import multiprocessing

    threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(dict.fromkeys(threads, "1"))
    try:
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        list(pool.map(int, range(workers)))  # start every worker now, under these variables
        return pool
    finally:
        for k, v in threads.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
