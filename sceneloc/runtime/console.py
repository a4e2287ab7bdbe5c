"""The command line's error output, shared by every command group: one red line on stderr and exit code 2."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)
"""Progress, messages and errors go to stderr; results (tables) to stdout."""


def print_error(message: str) -> None:
    # escape: messages quote user text ("[[fx 0 cx] ...]", paths) that rich would take for markup; soft_wrap: one
    # line whatever the terminal width, so the error stays greppable.
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def fail(message: str) -> None:
    """Print `message` as an error and leave the command with exit code 2."""
    print_error(message)
    raise typer.Exit(2)
