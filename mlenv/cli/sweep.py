"""`mlenv sweep` (not implemented yet)."""
