"""The result store's Alembic migrations (``server/store/migrate.py`` runs and makes them)."""
