"""The round loop (DESIGN section 4): ``run`` (the run as a whole) down to ``steps`` (one epoch)."""
