"""Model loading and architecture architectures."""
