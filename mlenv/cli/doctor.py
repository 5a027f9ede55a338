"""`mlenv doctor` (not implemented yet)."""
