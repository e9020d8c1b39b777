"""`mishbench bench`: providers, the run, the CSV sink, local and DDP runners. Floor 3."""
