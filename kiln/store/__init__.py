"""Persistence: one SQLite database per node (PostgreSQL for several nodes comes later).

Each room of the map owns its tables: it passes its schema to ``Database.migrate`` at startup
and keeps its SQL in its own repository module.
"""

from kiln.store.sqlite import Database

__all__ = ["Database"]
