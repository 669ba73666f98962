"""Experiment harness: modes × load profiles × repeats, KPIs, statistics and reports."""
