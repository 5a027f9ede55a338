"""`mlenv gen` (not implemented yet)."""
