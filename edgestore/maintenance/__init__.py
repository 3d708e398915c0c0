"""Maintenance jobs over the engine: garbage collection, digest filling, scrub and repair
(tiering to come)."""
