"""Analysis of finished runs: loss-curve smoothing, run loading (incl. external logs), summary table, figures.

Nothing here imports torch or the training code, so re-drawing figures after a style or smoothing
change is fast and needs only numpy, pandas and matplotlib. Import the submodules explicitly
(`from optical_clm.analysis import smoothing`).
"""
