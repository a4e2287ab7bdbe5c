"""Helpers shared by test modules (imported as `from conftest import ...`)."""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest

from sceneloc.cli import main


def run_cli(*args) -> tuple[int, str]:
    """Run the CLI entry point in-process: (exit code, stdout + stderr). Any exception other than the SystemExit
    main() ends with (i.e. a traceback) propagates and fails the test."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["sceneloc", *map(str, args)]
    try:
        with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exited:
            main()
    finally:
        sys.argv = argv
    return exited.value.code or 0, out.getvalue() + err.getvalue()
