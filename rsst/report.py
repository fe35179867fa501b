"""Reports, as users call them: ``python -m rsst.report PATH`` and, from Python, ``from rsst.report import report``.
The code lives in :mod:`rsst.commands.report`."""

from rsst.commands.report import ReportError, format_provenance, main, read_provenance, report

__all__ = ["ReportError", "format_provenance", "main", "read_provenance", "report"]

if __name__ == "__main__":
    raise SystemExit(main())
