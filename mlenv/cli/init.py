"""`mlenv init` (not implemented yet)."""
