"""Wire-format readers shared by the format readers: bounded binary, protobuf, flatbuffer."""
