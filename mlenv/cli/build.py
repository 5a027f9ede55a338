"""`mlenv build` (not implemented yet)."""
