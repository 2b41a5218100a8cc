"""Importance scores: pure functions ``(weight, statistics) -> scores`` (higher = keep), one module per
criterion (magnitude, wanda, sparsegpt, task_aware, owl). Import the module you need: a method's code
version then covers the criteria it uses and no other."""
