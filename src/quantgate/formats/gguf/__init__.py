"""GGUF: the bounded reader and the format's type tables."""
