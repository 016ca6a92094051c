"""Analyses of trained masks: evaluation, selection, ablations, overlap, residual stream."""
