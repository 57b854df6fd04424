"""Writing files atomically: under a temporary name in the same folder, renamed into place when complete, so an
interrupted run never leaves a half file that looks complete (a rename within one file system is atomic).

    with atomic_path(path) as tmp:      # any writer: np.save, model.save, savefig...
        write(tmp)
    write_text_atomic(path, text); write_csv(rows, path); save_figure_atomic(fig, path, dpi=110)

Outputs of the package go through here: preprocessing's arrays and manifest, the run dir's reports and model
(history.csv is appended epoch by epoch, TensorBoard's logs/ are its own), the benchmark's and the studies'
reports; enhance.py writes each series into a temporary folder renamed when complete. What a killed run left under
a temporary name is swept by the next run in that folder (sweep_stale: preprocessing's arrays, the run dir and
its training backup, enhance.py's output folder).
"""

import csv
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"  # temporary names: TMP_PREFIX, the writer's process tag, "-", the final name
# The temporary names this process gave out (temporary_name). A name with this process' id that is not here was left
# by an earlier process that had the same id: in a container every run is process 1.
_GIVEN = set()


def _started(pid):
    """When process `pid` started (clock ticks since boot, /proc/PID/stat), or None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fp:
            return int(fp.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _process_tag(pid):
    """"PID@START" (START: _started), or "PID" where the start cannot be read: a process id alone is reused, and
    a killed run's leftovers would be kept for good while another process holds its id (a run that was process 1
    in a container, the next one run on the host)."""
    started = _started(pid)
    return str(pid) if started is None else f"{pid}@{started}"


def temporary_name(name, prefix=TMP_PREFIX, separator="-"):
    """`prefix`, this process' tag, `separator`, `name`: a temporary name this process owns (left_by_ended_run)."""
    given = f"{prefix}{_process_tag(os.getpid())}{separator}{name}"
    _GIVEN.add(given)
    return given


def temporary_path(path):
    """Where `path` is written before it is renamed into place."""
    path = Path(path)
    return path.with_name(temporary_name(path.name))


@contextmanager
def atomic_path(path):
    """The temporary name to write `path` through (temporary_path: the same suffix, so writers that read the
    format from it still can); renamed into place when the block ends, removed if it raises."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)  # no fsync: against an interrupted process, not a power loss (preprocessing streams
        # every series through here, and a sync per file would wait for the disk each time)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(rows, path, columns=None):
    """rows (dicts) as a CSV at path, written atomically; columns: rows[0]'s keys unless given."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def save_figure_atomic(fig, path, **kwargs):
    """fig.savefig(path, **kwargs) through a temporary name."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)


def remove_path(path):
    """Remove a file, a link or a folder with all it holds; nothing when it is not there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_stale(folder, prefix=TMP_PREFIX):
    """Remove what killed runs left in `folder` under temporary names (`prefix`, then the writer's process tag, "-"):
    files or folders whose process no longer runs on this machine (left_by_ended_run). Those this process gave out
    (temporary_name) and live processes' are kept, and so is
    any name without a process id after `prefix` (another writer's, e.g. enhance.py's ".tmp-enhance-" under the
    generic prefix). Process ids are this machine's: a writer on another machine sharing the folder looks ended.
    Returns the number removed."""
    removed = 0
    for tmp in Path(folder).glob(prefix + "*"):
        if not left_by_ended_run(tmp.name, prefix):
            continue
        remove_path(tmp)
        removed += 1
    return removed


def left_by_ended_run(name, prefix=TMP_PREFIX):
    """True when `name` is a temporary name (`prefix`, a process tag, "-") whose process no longer runs here (its
    id is free, or held by a process that started at another time), or one with this process' id that this process
    did not give out (an earlier process with the same id)."""
    tag = name[len(prefix):].split("-", 1)[0] if name.startswith(prefix) else ""
    pid, _, started = tag.partition("@")
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return name not in _GIVEN
    if not _alive(int(pid)):
        return True
    now = _started(int(pid))
    return started.isdigit() and now is not None and now != int(started)


def _alive(pid):
    """False only when no process `pid` exists (an id os.kill cannot take counts as alive: the file is kept). On
    Windows os.kill(pid, 0) would end the process: every other process counts as alive there."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: it exists, owned by someone else
        return True
    return True
