"""The platform's commands: ``train`` (launch.py, ``rsst-train``), ``report`` and ``export``."""
