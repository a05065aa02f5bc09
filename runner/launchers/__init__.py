"""How jobs reach processes: the fused launcher (many runs as one stacked model) and the distributed entry (one run across processes)."""
