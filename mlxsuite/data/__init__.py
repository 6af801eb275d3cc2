"""Corpora and tokenizers."""
