"""Rollouts: routing of an alias (weighted, sticky variants) and the A/B report."""
