"""Running an experiment's runs: one lock file per run, skip when done, resume, workers.

A run (cell x seed) lives in ``runs/<cell>/seed-<s>/`` and is *done* when it
holds ``model.safetensors`` (the loop's final weights) and ``result.json``
(our test evaluation). Any number of processes may work on one experiment
folder: each takes a run by creating ``seed-<s>.lock`` with O_CREAT | O_EXCL
and skips runs another live process holds. The lock names its owner by pid, host
name, host id (machine id + boot id) and the process's start time, so a lock is
taken over when its owner is gone: same machine and either another boot, no such
pid, or a pid that now belongs to another process (other start time). A lock of
another machine is never taken; the command ends non-zero listing such runs. A run
that was killed resumes from its checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ...data.listops import generate_listops
from ...data.probes import ProbeSpec, generate_probe
from ...training.config import RunConfig
from ...training.evaluate import evaluate_run
from ...training.loop import Run
from ...training.run_dir import RunDir
from ..route_gradient import initial_route_gradient
from .spec import PROBE_TASKS, Cell, ExperimentSpec

RESULT = "result.json"
SOLVED = 0.95  # validation accuracy at which a probe counts as learned


def run_dir(folder: Path, cell: Cell, seed: int) -> Path:
    return Path(folder) / "runs" / cell.key / f"seed-{seed}"


def is_done(directory: Path) -> bool:
    return RunDir(directory).is_finished() and (directory / RESULT).is_file()


def host_id() -> str:
    """This machine and boot: ``<machine id>:<boot id>`` (/etc/machine-id, else the host
    name; /proc/sys/kernel/random/boot_id, else "-"). No spaces."""
    machine = _first_line("/etc/machine-id", "/var/lib/dbus/machine-id") or socket.gethostname()
    boot = _first_line("/proc/sys/kernel/random/boot_id") or "-"
    return f"{machine}:{boot}".replace(" ", "_")


def _first_line(*paths: str) -> str | None:
    for path in paths:
        try:
            line = Path(path).read_text().strip()
        except OSError:
            continue
        if line:
            return line
    return None


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as a token that differs between two processes that
    had the same pid: ``proc:<ticks since boot>`` (/proc/<pid>/stat field 22), else
    ``psutil:<seconds>`` when psutil is installed; None when unknown or no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        stat = None
    if stat is not None:
        fields = stat.rpartition(")")[2].split()  # after "pid (comm)": fields 3, 4, ...
        if len(fields) > 19 and fields[19].isdigit():
            return f"proc:{fields[19]}"
    try:
        import psutil
    except ImportError:
        return None
    try:
        return f"psutil:{psutil.Process(pid).create_time():.3f}"
    except (psutil.Error, OSError):
        return None


class RunLock:
    """An exclusive lock file holding "pid host host-id start-time nonce"; stale when that
    process is gone (see ``_is_stale``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        start = process_start(os.getpid()) or "-"
        self.owner = f"{os.getpid()} {_host_name()} {host_id()} {start} {time.time_ns()}"
        self.held = False

    def acquire(self) -> bool:
        """True when the lock is ours now; False when a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._take_over_stale():
                    return False
                continue
            with os.fdopen(handle, "w") as file:
                file.write(self.owner + "\n")
            self.held = True
            return True
        return False

    def release(self) -> None:
        if self.held and self._read(self.path) == self.owner:
            self.path.unlink(missing_ok=True)
        self.held = False

    def _take_over_stale(self) -> bool:
        """Remove the lock if its owner is dead. The lock is renamed away first (atomic), so
        of two processes that both saw it stale only one removes it; the other, if it renamed
        a fresh lock by mistake, puts it back."""
        seen = self._read(self.path)
        if seen is None or not _is_stale(seen, self.path):
            return seen is None  # vanished meanwhile: try again
        moved = self.path.with_name(f"{self.path.name}.{os.getpid()}.stale")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return True
        if self._read(moved) != seen:  # a fresh lock taken meanwhile: give it back
            with contextlib.suppress(FileExistsError):
                os.link(moved, self.path)
        moved.unlink(missing_ok=True)
        return True

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            return None


def _is_stale(owner: str, path: Path) -> bool:
    """Whether the lock's owner is certainly gone. A lock of another machine is never
    stale (we cannot look at its processes); one of this machine is when it was taken in
    another boot, when its pid is dead, or when that pid now has another start time (a pid
    reused after a reboot or by an unrelated process). Older locks ("pid host nonce") are
    judged by host name and pid, and by start time against the lock file's age."""
    parts = owner.split()
    if len(parts) < 2 or not parts[0].isdigit():
        # Created but not written yet (or garbage): stale once it has been so for a minute.
        return time.time() - path.stat().st_mtime > 60
    pid, host = int(parts[0]), parts[1]
    if host != _host_name():
        return False  # another machine's process: we cannot tell, so never steal it
    if len(parts) >= 5:
        machine, _, boot = parts[2].rpartition(":")
        my_machine, _, my_boot = host_id().rpartition(":")
        if machine != my_machine:
            return False  # another machine of the same name
        if boot != my_boot and "-" not in (boot, my_boot):
            return True  # taken before this machine last booted: its process is gone
        if not _pid_alive(pid):
            return True
        recorded, now = parts[3], process_start(pid)
        if recorded == "-" or now is None or now.partition(":")[0] != recorded.partition(":")[0]:
            return False  # start times not comparable: the pid alone says alive
        return now != recorded  # the pid belongs to another process now
    if not _pid_alive(pid):
        return True
    started = _process_started_at(pid)  # after the lock was written: not its owner
    return started is not None and started > path.stat().st_mtime + 2.0


def _host_name() -> str:
    return socket.gethostname().replace(" ", "_") or "-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _process_started_at(pid: int) -> float | None:
    """Wall-clock start of ``pid`` in seconds (Linux /proc: boot time + start ticks)."""
    start = process_start(pid)
    if start is None:
        return None
    source, _, value = start.partition(":")
    if source == "psutil":
        return float(value)
    try:
        stat = Path("/proc/stat").read_text()
        boot = next(float(row.split()[1]) for row in stat.splitlines() if row[:6] == "btime ")
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return boot + int(value) / os.sysconf("SC_CLK_TCK")


def describe_lock(path: Path) -> str:
    """Who holds a run's lock, in words (for the list of unfinished runs)."""
    owner = RunLock._read(path)
    if owner is None:
        return "not finished"
    parts = owner.split()
    if len(parts) >= 2 and parts[0].isdigit():
        who = f"pid {parts[0]} on host {parts[1]}"
    else:
        who = f"an unreadable owner {owner[:40]!r}"
    return f"held by {who} (lock {path}); if that process is gone, delete the lock file and resume"


def unfinished_runs(spec: ExperimentSpec, folder: Path) -> list[str]:
    """One line per run of the experiment that is not done: where, and why if known."""
    lines = []
    for seed in spec.seeds:
        for cell in spec.cells:
            directory = run_dir(folder, cell, seed)
            if is_done(directory):
                continue
            lock = directory.parent / f"seed-{seed}.lock"
            why = describe_lock(lock) if lock.exists() else "not finished (see the output above)"
            lines.append(f"{cell.label} seed {seed} ({directory}): {why}")
    return lines


def check_same_config(directory: Path, config: RunConfig) -> None:
    """Refuse to continue a run that was started with other settings."""
    run = RunDir(directory)
    if not run.checkpoint.is_file() or not run.is_run():
        return
    saved = run.config_values()
    wanted = yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))
    if saved != wanted:
        changed = _differences(saved, wanted)
        raise ValueError(
            f"{directory} was started with other settings ({', '.join(changed[:5])}); "
            "use another --out or delete that run"
        )


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    found = []
    for key in keys:
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            found += _differences(left, right, f"{prefix}{key}.")
        elif left != right:
            found.append(f"{prefix}{key}: {left!r} -> {right!r}")
    return found


def run_one(
    spec: ExperimentSpec, folder: Path, cell: Cell, seed: int, *, quiet: bool = True
) -> str:
    """Train and test one run unless it is done or busy: "done", "ran" or "busy"."""
    directory = run_dir(folder, cell, seed)
    if is_done(directory):
        return "done"
    lock = RunLock(directory.parent / f"seed-{seed}.lock")
    if not lock.acquire():
        return "busy"
    try:
        if is_done(directory):  # finished by another process since we looked
            return "done"
        config = spec.run_config(cell, seed)
        check_same_config(directory, config)
        run = RunDir(directory)
        resume = run.checkpoint.is_file()
        if not resume:  # killed before its first checkpoint: start afresh
            for path in [*run.unfinished_start(), run.config]:
                path.unlink(missing_ok=True)
        at_init = initial_route_gradient(config) if spec.kind == "hst-route" else None
        started = time.perf_counter()
        final = Run(config, directory, resume=resume, quiet=quiet).train()
        seconds = time.perf_counter() - started
        result = {
            "cell": cell.key,
            "label": cell.label,
            "seed": seed,
            "val_accuracy": final.get("val_accuracy"),
            "test_accuracy": evaluate_test_accuracy(directory),
            "seconds": round(seconds, 1),  # of the last session (a resumed run: its rest)
            "resumed": resume,
            "steps": final_step(directory),
            "solved_at": first_step_reaching(directory, SOLVED),
            "reachability": json.loads(run.reachability.read_text()),
        }
        if at_init is not None:
            result["route_gradient_at_init"] = at_init
        if spec.attack_rolls:
            result["test_attacked"] = {
                str(roll): evaluate_test_accuracy(directory, roll=roll)
                for roll in spec.attack_rolls
            }
        run.write_text(directory / RESULT, json.dumps(result) + "\n")
        return "ran"
    finally:
        lock.release()


def _metrics(directory: Path) -> list[dict]:
    return RunDir(directory).read_metrics()


def final_step(directory: Path) -> int:
    return max((record["step"] for record in _metrics(directory)), default=0)


def first_step_reaching(directory: Path, accuracy: float) -> int | None:
    """The first evaluation step whose validation accuracy is at least ``accuracy``."""
    for record in _metrics(directory):
        if record.get("val_accuracy", -1.0) >= accuracy:
            return record["step"]
    return None


def evaluate_test_accuracy(directory: Path, *, roll: int | None = None) -> float:
    """Test accuracy of the run's best weights, optionally under the word-order-shift
    attack (also written to the run's eval-test[-rollK].json)."""
    return evaluate_run(directory, split="test", roll=roll)["accuracy"]


def work(spec: ExperimentSpec, folder: Path, *, quiet: bool = True, log=print) -> dict[str, int]:
    """Every run of the experiment this process can take, seed by seed (so a partial
    experiment has whole seeds). Returns how many runs were done / ran / busy."""
    counts = {"done": 0, "ran": 0, "busy": 0}
    for seed in spec.seeds:
        for cell in spec.cells:
            status = run_one(spec, folder, cell, seed, quiet=quiet)
            counts[status] += 1
            if status == "ran":
                result = json.loads((run_dir(folder, cell, seed) / RESULT).read_text())
                log(f"  {cell.label} seed {seed}: test accuracy {result['test_accuracy']:.4f}")
            elif status == "busy":
                log(f"  {cell.label} seed {seed}: running in another process, skipped")
    return counts


def spawn_workers(folder: Path, workers: int, *, quiet: bool = True) -> None:
    """``workers`` processes of ``ernie-sparse experiment resume FOLDER`` sharing the CPU
    cores (OMP_NUM_THREADS); they divide the runs among them through the lock files."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "ernie_sparse", "experiment", "resume", str(folder)]
    command += ["--workers", "1", "--no-report", *(["--quiet"] if quiet else [])]
    processes = [subprocess.Popen(command, env=env) for _ in range(workers)]
    failed = [p.args for p in processes if p.wait() != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {workers} workers failed; see their output above")


def ensure_data(spec: ExperimentSpec, *, log=print) -> None:
    """The task's data must exist; short ListOps is generated for the tiny scale."""
    config = spec.run_config(spec.cells[0], spec.seeds[0])
    data = Path(config.train.data)
    if spec.task == "listops" and not (data / "basic_train.tsv").is_file():
        if spec.scale != "tiny":
            raise ValueError(
                f"{data}: no ListOps data; make it with "
                f"`ernie-sparse data listops --out {data}` or pass --data"
            )
        log(f"generating short ListOps expressions in {data}")
        generate_listops(
            data, num_train=2000, num_val=500, num_test=500, seed=0,
            min_len=20, max_len=150, workers=2,
        )  # fmt: skip
    elif spec.task in PROBE_TASKS and not (data / "probe.json").is_file():
        log(f"generating the {spec.task} data in {data}")
        generate_probe(data, probe_spec(spec.task), num_train=4000, num_eval=500, seed=0)
    elif not data.exists():
        raise ValueError(f"{data}: the {spec.task} data is missing; pass --data")


def probe_spec(task: str) -> ProbeSpec:
    """The probes of configs/probe/*-tiny: 16-position blocks, 15 input tokens with HST."""
    kind = task.removeprefix("probe-")
    if kind == "majority":
        return ProbeSpec(kind, length=225, block_size=15)
    return ProbeSpec(kind, length=240, block_size=15, distance=13)
