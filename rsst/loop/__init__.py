"""The round loop (docs/algorithms.md, section 1): ``run`` (the run as a whole) down to ``hot_loop`` (one epoch)."""
