"""`mishbench report`: merge result CSVs into tables and plots. Floor 3."""
