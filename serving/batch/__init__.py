"""Batch scoring (`serving batch`): the runner and its file formats."""
