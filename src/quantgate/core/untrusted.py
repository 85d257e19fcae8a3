"""Every string taken from an artifact (tensor, layer, key and file names, metadata, policy text) is
hostile when printed: a pull request can add a file whose tensor is named `\\n::add-mask::…`.

One sanitiser for every renderer and log line:

- `plain(text)`: one inert line for a terminal or a CI log. Control characters (C0, DEL, C1, CR, LF,
  ESC), lone surrogates (a non-UTF-8 file name, a `\\ud800` escape), Unicode line separators and bidi
  overrides are shown escaped (`\\x1b`, `\\udcff`), so nothing can start a line, move the cursor or
  crash an encoder; `##[` (the runner's legacy command syntax, matched anywhere in a line) and a
  line-leading `::` (a workflow command) are neutralised. Idempotent: plain(plain(x)) == plain(x).
- `lines(text)`: the same per line, for a message that is several lines on purpose.
- `markdown(text)`: plain, then every markdown metacharacter escaped, so no link, image, tag,
  emphasis or table cell boundary can come from the text.
- `clean(value)`: plain applied to every string (and key) of a report-like tree (the HTML report,
  which prints every layer anyway; the others make each printed line or field plain instead).
- `stop_commands(text)`: text wrapped in `::stop-commands::<random token>` … `::<token>::` when
  GITHUB_ACTIONS=true, as GitHub recommends for untrusted output: the runner then parses no
  workflow command inside, whatever slipped through.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

# Shown escaped: C0, DEL, C1, surrogates, and the invisible characters that reorder or split a line.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff\ufeff]")
_LEADING_COMMAND = re.compile(r"^(\s*):")
# what can make a link, an image, emphasis, code, a cell boundary, math, a mention (@user), an issue
# link (#1) or an autolink (http://…); not an intraword `_` (no emphasis in GFM) nor the `:` of
# anything but `://`, so that ordinary names stay readable in the markdown source
_MARKDOWN = re.compile(r"[\\`*{}\[\]!|~#@$]|:(?=//)|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
# `<` can open no tag and `&` spell no entity; a `>` outside a tag is text (a blockquote only at a
# line's start, where a cell never is)
_MARKDOWN_ENTITIES = {"&": "&amp;", "<": "&lt;"}
_WWW = re.compile(r"(?i)(www)\.")


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(text: Any) -> str:
    """`text` as one inert line: see the module's docstring."""
    text = str(text)
    # the common case, a plain ASCII name, costs three C-level scans
    if text.isascii() and text.isprintable() and "##[" not in text and "::" not in text:
        return text
    text = _UNSAFE.sub(_escape, text)
    text = text.replace("##[", "#\\x23[")
    if text.lstrip().startswith("::"):
        text = _LEADING_COMMAND.sub(r"\1\\x3a", text, count=1)
    return text


def lines(text: Any) -> str:
    """Each line of `text` made plain: for a message whose line breaks are quantgate's own."""
    return "\n".join(plain(line) for line in str(text).split("\n"))


def markdown(text: Any) -> str:
    """`text` plain, with every markdown and HTML metacharacter escaped (for a table cell or inline
    text): no link, image, autolink, tag, emphasis or cell boundary can come out of it."""
    text = _MARKDOWN.sub(r"\\\g<0>", plain(text))
    for char, entity in _MARKDOWN_ENTITIES.items():
        text = text.replace(char, entity)
    # `www.example.com` autolinks without a colon
    return _WWW.sub(r"\1\\.", text)


def clean(value: Any) -> Any:
    """`value` with plain() applied to every string and dict key (for the renderers of a report)."""
    if isinstance(value, str):
        return plain(value)
    if isinstance(value, dict):
        return {plain(k) if isinstance(k, str) else k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def in_github(env: dict[str, str] | None = None) -> bool:
    return (os.environ if env is None else env).get("GITHUB_ACTIONS") == "true"


def stop_commands(text: str, stream: Any = None, env: dict[str, str] | None = None) -> str:
    """`text` between `::stop-commands::<token>` and `::<token>::` when GITHUB_ACTIONS=true and
    `stream` is not a regular file (`--format text > report.txt` is no log, and must not change).
    A fresh token each time: a region on stdout and one on stderr, read by the runner in either
    order, each end only their own."""
    if not text or not in_github(env) or _is_file(stream):
        return text
    import secrets  # only on a runner: its imports cost a plain run nothing

    token = secrets.token_hex(16)
    end = "" if text.endswith("\n") else "\n"
    return f"::stop-commands::{token}\n{text}{end}::{token}::\n"


def _is_file(stream: Any) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # no stream, or one with no descriptor (StringIO)
        return False


def json_safe(data: bytes) -> bytes:
    """JSON text with `##[` spelled `#\\u0023[`: the same value, but no legacy runner command. In JSON
    text `#` can only stand inside a string, where the escape means the same character."""
    return data.replace(b"##[", b"#\\u0023[") if b"##[" in data else data
