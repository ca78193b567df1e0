"""Tests of optical_clm.analysis and its scripts (smooth.py, summarize.py, plot.py) on synthetic logs."""
