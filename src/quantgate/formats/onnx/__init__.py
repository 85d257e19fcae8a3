"""ONNX: the bounded protobuf walk, shapes, external data and the layer reader.

`sniff` is this format's sniffing rule (formats.FORMATS); it imports nothing. ONNX has no magic
number, so it is tried after every format that has one.
"""

# ModelProto field number -> protobuf wire type (0 varint, 2 length-delimited)
_MODEL_FIELDS = {
    1: 0,  # ir_version
    2: 2,  # producer_name
    3: 2,  # producer_version
    4: 2,  # domain
    5: 0,  # model_version
    6: 2,  # doc_string
    7: 2,  # graph
    8: 2,  # opset_import
    14: 2,  # metadata_props
    20: 2,  # training_info
    25: 2,  # functions
    26: 2,  # configuration
}


def _varint(buf: bytes, pos: int) -> tuple[int, int] | None:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            return None
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    return None


def sniff(head: bytes, size: int) -> str | None:
    """A protobuf ModelProto: `ir_version` (field 1, varint) first, then a second known ModelProto
    field that fits the file. The reader then parses the whole structure."""
    if len(head) < 2 or head[0] != 0x08:
        return None
    parsed = _varint(head, 1)
    if parsed is None:
        return None
    ir_version, pos = parsed
    if not 1 <= ir_version <= 64:
        return None
    if pos == size:  # a model with nothing but ir_version is still an (empty) ONNX model
        return ""
    tag = _varint(head, pos)
    if tag is None:
        return None
    key, pos = tag
    wire = key & 7
    if _MODEL_FIELDS.get(key >> 3) != wire:
        return None
    if wire == 2:
        length = _varint(head, pos)
        return "" if length is not None and length[1] + length[0] <= size else None
    return ""
