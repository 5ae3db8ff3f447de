"""Benchmarks: scripts that print absolute figures and ratios; never part of the pass/fail tests."""
