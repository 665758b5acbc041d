"""Alembic migrations of the platform store, applied by ``Database.migrate``."""
