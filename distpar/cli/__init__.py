"""The command line: the only place that prints or exits (``distpar.cli.main``)."""

from distpar.cli.main import main

__all__ = ["main"]
