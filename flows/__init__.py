"""Prefect flows: the pipeline (on demand or scheduled)."""
