"""Batch-size scaling study: steps to a loss target per batch size, the fit of B_crit, and B_simple."""
