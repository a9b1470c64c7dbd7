"""Peer servers that benchmarks run beside inferd, so a ratio carries each claim."""
