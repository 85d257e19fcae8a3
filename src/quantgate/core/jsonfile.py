"""JSON documents read from files a user or an artifact supplied (manifests, saved reports, side
configs): parsed with bounded work, every failure one `JSONFileError` the caller turns into a finding
or a usage error naming the file.

`json` alone is not enough for hostile text: an integer of more than 4300 digits raises a bare
ValueError, deep nesting a RecursionError (or, below the recursion limit, a document that overflows
the stack of whatever walks it next), and a 4000-digit integer parses but overflows the first float
conversion. Here nesting is capped at MAX_DEPTH levels before parsing, an integer literal at
MAX_INT_DIGITS digits (a float holds up to 308), and NaN/Infinity, which are not JSON, are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

MAX_DEPTH = 64  # a quantgate report nests about 8 levels, a manifest 5, a Hugging Face config 4
MAX_INT_DIGITS = 300  # any integer quantgate reads is far below 1e300, and float() takes it

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
# every byte but the four brackets: brackets are ASCII, and no byte of a multi-byte UTF-8 sequence is
# ASCII, so deleting the other bytes of the UTF-8 text keeps exactly its brackets
_NON_BRACKET_BYTES = bytes(b for b in range(256) if b not in b"[]{}")
_LONG_INT = re.compile(rf"-?\d{{{MAX_INT_DIGITS + 1},}}")


class JSONFileError(ValueError):
    """The text is not a JSON document quantgate reads; str() is one line saying why and where.
    `too_deep` tells nesting apart (some callers give it its own finding code)."""

    def __init__(self, problem: str, pos: int | None = None, too_deep: bool = False):
        super().__init__(problem)
        self.pos = pos
        self.too_deep = too_deep


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"line {line} column {pos - (text.rfind(chr(10), 0, pos) + 1) + 1}"


def too_deep(text: str, limit: int = MAX_DEPTH, raw: bytes | None = None) -> bool:
    """True when brackets outside strings nest deeper than `limit`. Each pass drops the innermost
    level with C-speed string operations: `limit` linear passes, never a recursion. `raw`, the UTF-8
    bytes of `text` when the caller has them, makes the first bracket scan a byte translation."""
    if raw is not None:
        brackets = raw.translate(None, _NON_BRACKET_BYTES).decode("ascii")
    else:
        brackets = _NOT_BRACKET.sub("", text)
    if not _levels_exceed(brackets, limit):
        return False  # brackets inside strings only add depth: no need to strip them
    return _levels_exceed(_NOT_BRACKET.sub("", _STRING.sub("", text)), limit)


def _levels_exceed(brackets: str, limit: int) -> bool:
    for _ in range(limit):
        if not brackets:
            return False
        shorter = brackets.replace("[]", "").replace("{}", "")
        if len(shorter) == len(brackets):
            return False  # unbalanced: the parser says where
        brackets = shorter
    return bool(brackets) and ("[]" in brackets or "{}" in brackets)


class _IntTooLong(Exception):
    pass


def _parse_int(digits: str) -> int:
    if len(digits) > MAX_INT_DIGITS + 1:  # + 1: the sign
        raise _IntTooLong
    return int(digits)


def _no_constant(name: str) -> Any:
    raise JSONFileError(f"{name} is not a JSON number")


def loads(
    text: str,
    *,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
    max_depth: int = MAX_DEPTH,
    allow_nan: bool = False,
) -> Any:
    """The document in `text`; JSONFileError when it is not JSON, nests deeper than `max_depth`,
    or holds an integer of more than MAX_INT_DIGITS digits or (unless `allow_nan`: Python writes
    them into Hugging Face configs) NaN/Infinity."""
    if too_deep(text, max_depth):
        raise JSONFileError(f"nests deeper than {max_depth} levels", too_deep=True)
    try:
        return json.loads(
            text,
            object_pairs_hook=object_pairs_hook,
            parse_int=_parse_int,
            parse_constant=float if allow_nan else _no_constant,
        )
    except _IntTooLong:
        match = _LONG_INT.search(_STRING.sub(lambda m: " " * len(m.group()), text))
        pos = match.start() if match else None
        where = f" at {_where(text, pos)}" if pos is not None else ""
        raise JSONFileError(f"an integer has more than {MAX_INT_DIGITS} digits{where}", pos) from None
    except json.JSONDecodeError as exc:
        raise JSONFileError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", exc.pos) from None
    except RecursionError:  # defence in depth: the bracket scan should have refused it
        raise JSONFileError("nests too deeply", too_deep=True) from None
