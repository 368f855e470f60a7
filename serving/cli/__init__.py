"""The command line (`python -m serving ...`), one module per verb group."""
