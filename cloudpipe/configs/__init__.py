"""Packaged default configs (also reachable as the repository's top-level ``configs/``)."""
