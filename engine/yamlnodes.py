"""YAML loading that remembers where every key came from, for located error messages.

Used by the configuration loader now and by the rule loader later: both report
``file:line: key: message`` so an author can fix a problem in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class NodeLocator:
    """Maps a key path such as ``["accounts", 0, "name"]`` to a 1-based line number."""

    def __init__(self, root: yaml.Node | None):
        self.root = root

    def line_of(self, loc: list[Any] | tuple[Any, ...]) -> int | None:
        """Line of the deepest node along ``loc`` that exists in the document."""
        node, line = self.root, None
        for part in loc:
            if node is None:
                break
            line = node.start_mark.line + 1
            node = _child(node, part)
        if node is not None:
            line = node.start_mark.line + 1
        return line


def _child(node: yaml.Node, part: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == str(part):
                # a key whose value is empty points at the key itself
                return value if value.value not in ("", None) else key
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
        return node.value[part] if 0 <= part < len(node.value) else None
    return None


def load_with_locator(path: Path) -> tuple[Any, NodeLocator]:
    """Parse ``path`` once into plain data plus a locator; raises OSError or yaml.YAMLError."""
    text = Path(path).read_text(encoding="utf-8")
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    data = yaml.safe_load(text) if root is not None else {}
    return (data if data is not None else {}), NodeLocator(root)
