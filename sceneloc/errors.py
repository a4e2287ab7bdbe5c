"""The one exception type users see: a problem with an input, named by its file."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input. `str()` is a single line that names the file (when there is one) and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)
