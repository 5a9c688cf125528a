"""The papers' analyses as commands: ablations (ERNIE-Sparse Tables 5-6), the bottleneck
sweep (Figure 3) and the word-order-shift robustness table (Table 7)."""

from .report import write_report
from .runner import RunLock, is_done, run_dir, run_one, spawn_workers, work
from .spec import Cell, ExperimentSpec, make_spec

__all__ = [
    "Cell",
    "ExperimentSpec",
    "RunLock",
    "is_done",
    "make_spec",
    "run_dir",
    "run_one",
    "spawn_workers",
    "work",
    "write_report",
]
