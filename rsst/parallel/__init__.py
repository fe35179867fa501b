"""One run over several processes: the process group (``dist``), global-batch BatchNorm and DDP
(``ddp``), and agreement between the ranks (``agree``)."""
