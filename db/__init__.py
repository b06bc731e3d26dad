"""nachbar.db: the storage engine behind nachbar-db; start at nachbar.db.engine.Database."""
