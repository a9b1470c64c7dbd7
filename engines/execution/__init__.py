"""Execution instances: threads that take batches from a scheduler, run them on a backend
instance and answer each request (statistics, streams, sequence state)."""
