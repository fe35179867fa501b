"""Structured export, as users call it: ``python -m rsst.export RUN_DIR --round R`` and, from Python,
``from rsst.export import load_exported`` (docs/user-guide.md). The code lives in :mod:`rsst.commands.export`."""

from rsst.commands.export import ExportError, NothingToRemove, export_round, load_exported, main, save_exported

__all__ = ["ExportError", "NothingToRemove", "export_round", "load_exported", "main", "save_exported"]

if __name__ == "__main__":
    raise SystemExit(main())
