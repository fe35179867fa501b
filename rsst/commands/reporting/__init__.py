"""The parts of ``rsst.report``: reading run folders (runs), grouping them (groups), drawing them (plot)."""
