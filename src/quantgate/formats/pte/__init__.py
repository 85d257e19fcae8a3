"""ExecuTorch .pte: the flatbuffer program, its layers and the XNNPACK delegate."""
