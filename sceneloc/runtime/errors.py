"""The one exception type users see: a problem with an input, named by its file."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input. `str()` is a single line that names the file (when there is one) and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


def read_text_file(path: str | Path, what: str) -> str:
    """The UTF-8 text of a user's file (`what` names its kind in messages, e.g. "poses file"); InputError when it is
    missing, a folder, unreadable or not UTF-8."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, f"{what} not found") from None
    except IsADirectoryError:
        raise InputError(path, f"is a folder, not a {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read {what} ({e})") from None
