"""Where and how a run computes: the device, the precision and the execution of a batch."""
