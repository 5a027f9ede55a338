"""`mlenv lock` (not implemented yet)."""
