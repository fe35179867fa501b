"""One run over several processes: the process group (``dist``), global-batch BatchNorm and DDP
(``ddp``), and a step that fails on one rank stopping every rank (``fail_together``)."""
