"""The bundled demo repository: Triton's example models, built from code or shipped as
files under ``models/``."""
