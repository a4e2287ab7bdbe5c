"""Atomic file output: write to a temporary file in the target folder, then rename over the target, so that no
reader ever sees half a file and a failed run leaves nothing behind."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from sceneloc.runtime.errors import InputError


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path next to `path` to write to; on success it replaces `path` (os.replace), on error it is
    removed. Creates the parent folder; an unwritable location raises InputError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    except OSError as e:
        raise InputError(path, f"cannot write here ({e.strerror})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); results are meant to be shared like any other output.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Writes `data` to `path` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def _same_file(a: Path, b: Path) -> bool:
    """True when a and b name the same file or folder (through links, relative parts, hard links)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_writable(path: str | Path, inputs: Iterable[str | Path] = ()) -> None:
    """Fail early (InputError) when `path` could not be written as a file, before a long computation produces its
    content: an existing folder, one of the command's `inputs` (files or folders it reads; an output never
    replaces an input), or a location that cannot be written. Leaves nothing behind: missing folders are not made."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder: give the name of a file to write")
    for source in inputs:
        if _same_file(path, Path(source)):
            raise InputError(path, "is also an input of this command: writing it would destroy that input; "
                                   "give another output name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folders still missing are made by atomic_output, once there is content
    if not folder.is_dir():
        raise InputError(path, f"cannot write here ({folder} is not a folder)")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".check")
    except OSError as e:
        raise InputError(path, f"cannot write here ({e.strerror})") from None
    os.close(fd)
    os.unlink(tmp_name)
