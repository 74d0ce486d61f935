"""Small pieces the command modules share."""

from __future__ import annotations

import argparse
from collections.abc import Callable

EXIT_USAGE = 2


def show_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A ``run_command`` for a command group given no subcommand: its help, exit 2."""

    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return EXIT_USAGE

    return show
