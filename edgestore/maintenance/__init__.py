"""Maintenance jobs over the engine: garbage collection (scrub, repair, tiering to come)."""
