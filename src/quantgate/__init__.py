"""quantgate: a CI gate for quantized model artifacts."""

__version__ = "0.1.0"

SCHEMA_VERSION = "1"
