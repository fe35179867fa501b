"""``python -m rsst.export``: the export command (:mod:`rsst.commands.export`)."""

if __name__ == "__main__":
    from rsst.commands.export import main

    raise SystemExit(main())
