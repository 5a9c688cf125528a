"""Bad input in data files: an error that names the file and line, or a counted skip."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("ernie_sparse.data")


class DataFormatError(ValueError):
    """A malformed record; the message names the file and the line (or record)."""

    def __init__(self, path: str | Path, where: int | str | None, problem: str) -> None:
        location = f"{path}" if where is None else f"{path}:{where}"
        super().__init__(f"{location}: {problem}")
        self.path = str(path)
        self.where = where
        self.problem = problem


@dataclass
class BadRecords:
    """Collects malformed records: raise at the first one, or (``skip_bad``) skip and count.

    Readers call ``report(path, line, problem)`` for every bad record; with
    ``skip_bad`` the record is skipped, counted and logged, and ``summary()`` says
    how many were skipped, so nothing disappears without a trace.
    """

    skip_bad: bool = False
    skipped: list[DataFormatError] = field(default_factory=list)

    def report(self, path: str | Path, where: int | str | None, problem: str) -> None:
        error = DataFormatError(path, where, problem)
        if not self.skip_bad:
            raise error
        self.skipped.append(error)
        log.warning("skipped bad record %s", error)

    @property
    def count(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        if not self.skipped:
            return "0 bad records"
        first = self.skipped[0]
        return f"{self.count} bad records skipped (first: {first})"
