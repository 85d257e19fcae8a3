"""safetensors: the header reader, the quantization layouts and their scales."""
