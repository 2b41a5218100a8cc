"""Prefect tasks: thin wrappers that run TaskPrune stages (through DVC)."""
