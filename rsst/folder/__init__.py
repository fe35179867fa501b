"""The run folder: its name (``naming``), its files (``files``), the lock, repair, the checkpoint,
atomic writes, safe loading and provenance."""
