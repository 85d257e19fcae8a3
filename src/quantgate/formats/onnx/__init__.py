"""ONNX: the bounded protobuf walk, shapes, external data and the layer reader."""
