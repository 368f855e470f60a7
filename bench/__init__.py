"""`make bench`: the serving benchmark harness (run with `python -m bench.run`)."""
