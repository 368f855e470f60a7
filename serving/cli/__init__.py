"""The command line (`python -m serving ...`), one module per verb group."""

from serving.cli.main import main

__all__ = ["main"]
