"""Alembic environment and revisions of the store's schema (see tbench.results.migrate)."""
