"""Entry point from a checkout: ``python launch.py [overrides]``, the same command as ``rsst-train``.

It composes the Hydra config (``conf/``) and hands it to ``rsst.run``; see :mod:`rsst.commands.train`.
A user's mistake (a bad value, a missing file or device, a folder in use, a full disk) ends a
single run with one line on stderr and exit 2. In a sweep the job fails alone: the launcher runs
the other jobs and ends the sweep with a summary of the failures (see ``rsst/config/sweeps.py``).
"""

import sys

if __name__ == "__main__":
    try:  # Hydra and the platform load here: a Ctrl-C meanwhile is one line, as everywhere after
        from rsst.commands.train import main
    except KeyboardInterrupt:
        from rsst.errors import INTERRUPTED, INTERRUPTED_STARTING

        sys.stderr.write(f"{INTERRUPTED_STARTING}\n")
        raise SystemExit(INTERRUPTED) from None
    main()
