"""Weights in and out: Hugging Face and mlx-lm folders, GGUF, pruning, quantization."""
