"""`mishbench verify`: the checks of a subject (ours or a candidate) against the reference. Floor 3."""
