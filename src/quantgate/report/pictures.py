"""Pictures of a precision mix that need nothing to display: an inline SVG bar (HTML, any browser,
no script, no external asset) and an emoji bar for markdown, where GitHub strips inline SVG.

One palette for both: green for 4 bits and fewer, blue up to 8, amber up to 16, red above, grey
for precision nobody can know (an opaque delegate).
"""

from __future__ import annotations

from html import escape

# (upper bound of the bucket in bits, svg colour, emoji, legend label)
BUCKETS = (
    (4.0, "#2e9e5b", "🟩", "≤ 4-bit"),
    (8.0, "#2f6fd6", "🟦", "5–8-bit"),
    (16.0, "#e0a21a", "🟨", "9–16-bit"),
    (float("inf"), "#d64541", "🟥", "> 16-bit"),
)
UNKNOWN = ("#9aa0a6", "⬜", "unknown")


def _bucket(bits_key: str) -> tuple[str, str, str]:
    try:
        bits = float(bits_key)
    except ValueError:
        return UNKNOWN
    for upper, colour, emoji, label in BUCKETS:
        if bits <= upper:
            return colour, emoji, label
    return UNKNOWN  # pragma: no cover - inf catches everything


def colour(bits_key: str) -> str:
    return _bucket(bits_key)[0]


def label(bits_key: str) -> str:
    return f"{bits_key}-bit" if bits_key != "unknown" else "unknown"


def _cells(mix: dict[str, float], cells: int) -> list[tuple[str, int]]:
    """Largest-remainder rounding, so the cells always add up to `cells` (when the mix is not empty)."""
    total = sum(max(0.0, v) for v in mix.values())
    if total <= 0:
        return []
    exact = [(k, max(0.0, v) / total * cells) for k, v in mix.items()]
    counts = {k: int(x) for k, x in exact}
    left = cells - sum(counts.values())
    for k, _ in sorted(exact, key=lambda kv: kv[1] - int(kv[1]), reverse=True)[:left]:
        counts[k] += 1
    return [(k, counts[k]) for k, _ in exact]


def emoji_bar(mix: dict[str, float], cells: int = 20) -> str:
    """`🟩🟩🟩🟦…`: one coloured square per 1/cells of the basis."""
    return "".join(_bucket(k)[1] * n for k, n in _cells(mix, cells))


def emoji_legend(keys: list[str] | None = None) -> str:
    shown = []
    seen = set()
    for key in keys or []:
        _, e, lab = _bucket(key)
        if lab not in seen:
            seen.add(lab)
            shown.append(f"{e} {lab}")
    if not keys:
        shown = [f"{e} {lab}" for _, _, e, lab in BUCKETS] + [f"{UNKNOWN[1]} {UNKNOWN[2]}"]
    return " · ".join(shown)


def svg_bar(mix: dict[str, float], title: str, width: int = 560, height: int = 26) -> str:
    """A stacked horizontal bar, one segment per bit width, labelled where there is room."""
    total = sum(max(0.0, v) for v in mix.values())
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="mix" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#eceff1"/>',
    ]
    x = 0.0
    for key, value in mix.items():
        if total <= 0 or value <= 0:
            continue
        w = width * value / total
        text = f"{label(key)} {value / total:.1%}"
        parts.append(
            f'<rect class="seg" data-bits="{escape(key)}" x="{x:.2f}" y="0" width="{w:.2f}" '
            f'height="{height}" fill="{colour(key)}"><title>{escape(text)}</title></rect>'
        )
        if w >= 7.2 * len(text) + 8:  # ~7 px per character at 12 px sans-serif
            parts.append(
                f'<text x="{x + w / 2:.2f}" y="{height / 2 + 4:.1f}" text-anchor="middle" '
                f'font-family="sans-serif" font-size="12" fill="#fff">{escape(text)}</text>'
            )
        x += w
    parts.append("</svg>")
    return "".join(parts)


def svg_legend(keys: list[str]) -> str:
    """Swatches for the bit widths shown in the bars above it."""
    items = []
    for key in keys:
        items.append(
            f'<span class="swatch"><svg xmlns="http://www.w3.org/2000/svg" width="12" height="12">'
            f'<rect width="12" height="12" fill="{colour(key)}"/></svg> {escape(label(key))}</span>'
        )
    return '<div class="legend">' + " ".join(items) + "</div>"
