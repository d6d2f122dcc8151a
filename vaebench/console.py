"""The consoles of the command line and its one way to stop on an error."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

out = Console()
err = Console(stderr=True, soft_wrap=True)  # error text is never wrapped mid-word


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr (as plain text: no markup, no highlighting) and
    exit with ``code`` (2: bad input, nothing written; 1: a failure after work was done)."""
    err.print(Text("error: ", style="bold red") + Text(message), highlight=False)
    raise typer.Exit(code)


def say(message: str) -> None:
    """A plain line on stderr (progress and locations; stdout stays for results)."""
    err.print(message, highlight=False, markup=False)
