"""HTML sanitising for the console (nh3): customer mail to display, agent HTML to send.

Inbound mail is hostile until proven otherwise. ``for_display`` keeps the markup a support
agent needs to read a message (text formatting, tables, links, images) and removes
everything active: scripts, event handlers (``onerror``), ``javascript:``/``vbscript:`` URLs,
forms, frames, ``<style>`` blocks and every CSS declaration outside a small list of
properties whose values cannot fetch anything (no ``url()``, ``expression()``, escapes).
Remote images are dropped until the agent allows them (they are trackers as often as
not); ``cid:`` images are rewritten to a URL the caller serves from the message's own
attachments. The console shows the result in a sandboxed iframe under a strict CSP, so a
sanitiser miss still cannot run script.

``for_sending`` cleans the rich-text reply an agent wrote (same allow-lists, no image
blocking): what leaves Postdesk is as inert as what came in.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import nh3

TAGS = frozenset(nh3.ALLOWED_TAGS | {"font", "center", "tfoot", "th", "u", "s"})
_CELL = {"align", "valign", "bgcolor", "width", "height", "colspan", "rowspan", "nowrap"}
ATTRIBUTES: dict[str, set[str]] = {
    **{tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()},
    "*": {"style", "title", "dir", "lang", "align"},
    "a": {"href", "title", "name"},
    "img": {"src", "alt", "width", "height", "align", "border", "title"},
    "font": {"color", "face", "size"},
    "table": {"width", "height", "border", "cellpadding", "cellspacing", "bgcolor", "align",
              "summary"},
    "td": _CELL | {"headers"}, "th": _CELL | {"headers", "scope"},
    "tr": {"align", "valign", "bgcolor", "height"},
    "div": {"align"}, "p": {"align"},
}
URL_SCHEMES = frozenset({"http", "https", "mailto", "tel", "cid", "data"})
LINK_SCHEMES = ("http:", "https:", "mailto:", "tel:")
# CSS that lays text out and cannot load anything (no background, content, image props)
STYLE_PROPERTIES = frozenset({
    "color", "background-color", "font", "font-family", "font-size", "font-style",
    "font-weight", "font-variant", "text-align", "text-decoration", "text-indent",
    "text-transform", "line-height", "letter-spacing", "word-spacing", "white-space",
    "vertical-align", "direction", "margin", "margin-top", "margin-right", "margin-bottom",
    "margin-left", "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
    "border", "border-top", "border-right", "border-bottom", "border-left", "border-color",
    "border-style", "border-width", "border-radius", "border-collapse", "border-spacing",
    "width", "min-width", "max-width", "height", "min-height", "max-height", "display",
    "list-style-type", "table-layout", "float", "clear", "overflow-wrap", "word-break",
})
_BAD_CSS_VALUE = re.compile(r"url\s*\(|expression\s*\(|image-set|@|\\|/\*|javascript:",
                            re.IGNORECASE)
_DATA_IMAGE = re.compile(r"data:image/(png|jpe?g|gif|webp);base64,[A-Za-z0-9+/=\s]+\Z",
                         re.IGNORECASE)
CidUrl = Callable[[str], str | None]


@dataclass(frozen=True)
class Cleaned:
    html: str
    blocked_images: int  # remote images dropped (the agent may allow them)


def for_display(html: str, *, remote_images: bool = False,
                cid_url: CidUrl | None = None) -> Cleaned:
    """Sanitise inbound mail HTML for display (see the module docstring)."""
    blocked = 0

    def image(src: str) -> str | None:
        nonlocal blocked
        src = src.strip()
        lower = src.lower()
        if lower.startswith("cid:"):
            return cid_url(_cid(src)) if cid_url is not None else None
        if lower.startswith("data:"):
            return src if _DATA_IMAGE.match(src) else None
        if lower.startswith(("http:", "https:", "//")):
            if remote_images:
                return src if not lower.startswith("//") else "https:" + src
            blocked += 1
        return None

    cleaned = _clean(html, image)
    return Cleaned(cleaned, blocked)


def for_sending(html: str) -> str:
    """Sanitise an agent's rich-text reply before it is composed into a mail."""
    def image(src: str) -> str | None:
        lower = src.strip().lower()
        if lower.startswith(("http:", "https:", "cid:")) or _DATA_IMAGE.match(src.strip()):
            return src.strip()
        return None

    return _clean(html, image)


def clean_style(value: str) -> str | None:
    """Keep the declarations of allowed properties whose values load nothing."""
    kept = []
    for declaration in value.split(";"):
        prop, sep, val = declaration.partition(":")
        prop = prop.strip().lower()
        if not sep or prop not in STYLE_PROPERTIES or _BAD_CSS_VALUE.search(val):
            continue
        kept.append(f"{prop}: {val.strip()}")
    return "; ".join(kept) or None


def _clean(html: str, image: Callable[[str], str | None]) -> str:
    def attribute(tag: str, name: str, value: str) -> str | None:
        if name == "style":
            return clean_style(value)
        if tag == "img" and name == "src":
            return image(value)
        if name == "href":
            return value if value.strip().lower().startswith(LINK_SCHEMES) else None
        return value

    return nh3.clean(html, tags=set(TAGS), clean_content_tags={"script", "style", "title"},
                     attributes=ATTRIBUTES, attribute_filter=attribute, url_schemes=set(
                         URL_SCHEMES), filter_style_properties=set(STYLE_PROPERTIES),
                     set_tag_attribute_values={"a": {"target": "_blank"}},
                     link_rel="noopener noreferrer nofollow", strip_comments=True)


def _cid(src: str) -> str:
    """The Content-ID a ``cid:`` URL names (RFC 2392: URL-encoded, no angle brackets)."""
    from urllib.parse import unquote

    return unquote(src[4:]).strip().strip("<>")
