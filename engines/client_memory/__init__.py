"""Clients' shared memory, Triton's system and CUDA extensions: one table of registered
regions, bounds-checked reads and writes."""
