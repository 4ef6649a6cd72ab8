"""Models in: Hugging Face checkpoints (and, with offloading, ones larger than memory)."""
