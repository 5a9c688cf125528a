"""A progress bar (loss, accuracy, steps/s, ETA) that stays quiet when stderr is no terminal."""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int, start: int, *, quiet: bool) -> None:
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
        self.position = start
        self.postfix: dict[str, str] = {}

    def update(self, step: int, **values: float) -> None:
        if self.bar is None:
            return
        self.postfix.update({k: f"{v:.4g}" for k, v in values.items()})
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(step - self.position)
        self.position = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
