"""Helpers the tests share: model and repository builders, server processes, receivers."""
