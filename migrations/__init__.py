"""Alembic migrations for the ckpt index, shipped inside the package as ``ckpt.migrations``."""
