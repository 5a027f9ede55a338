"""`mlenv sync` (not implemented yet)."""
