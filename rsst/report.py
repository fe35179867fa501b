"""``python -m rsst.report``: the report command (:mod:`rsst.commands.report`)."""

if __name__ == "__main__":
    from rsst.commands.report import main

    raise SystemExit(main())
