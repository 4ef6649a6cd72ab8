"""How a command stops on bad input: the message in red, exit status 2."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

from quantbalance.errors import QuantBalanceError


def fail(error: QuantBalanceError, console: Console) -> NoReturn:
    """Print ``error`` (what was wrong and what is accepted) and exit with status 2.

    Args:
        error: the error a command caught.
        console: where the command prints.

    Raises:
        typer.Exit: always, with code 2 (without the error's traceback).
    """
    console.print(f"[bold red]error:[/] {error}")
    raise typer.Exit(2) from None
