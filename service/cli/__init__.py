"""`codat-relay`, the command line: `main` is the console script's entry point."""

from service.cli.entry import main

__all__ = ["main"]
