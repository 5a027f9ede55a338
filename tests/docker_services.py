"""Docker Engine, base image and registry fixtures (being written)."""
