"""Mail stores ``postdesk import`` reads: an mbox file, a Maildir, or a folder of .eml files.

Each source lists its messages in a stable order (mbox: file order; Maildir: by file name,
which begins with the delivery time; .eml: by path), so an interrupted import resumes by
position. Bytes are returned as stored; the intake recognises LF and CRLF copies of one
message as the same (engine.mime normalises line ends before hashing the body).
"""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KINDS = ("auto", "mbox", "maildir", "eml")


@dataclass(frozen=True)
class Item:
    """One message of a source: where it is (for the summary) and its bytes or the error."""

    index: int
    where: str
    raw: bytes | None
    error: str | None = None


class MailSource:
    """Base: ``keys`` in import order; ``read`` one of them."""

    kind = ""

    def __init__(self, path: Path):
        self.path = path
        self._keys = self._list()

    def _list(self) -> list[str]:
        raise NotImplementedError

    def _read(self, key: str) -> bytes:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._keys)

    def items(self, start: int = 0) -> Iterator[Item]:
        for index in range(start, len(self._keys)):
            key = self._keys[index]
            try:
                yield Item(index, self._where(index, key), self._read(key))
            except (OSError, KeyError, mailbox.Error) as exc:
                yield Item(index, self._where(index, key), None, f"cannot read: {exc}")

    def _where(self, index: int, key: str) -> str:
        return key


class MboxSource(MailSource):
    kind = "mbox"

    def _list(self) -> list[str]:
        self._box = mailbox.mbox(self.path, create=False)
        return [str(k) for k in self._box.iterkeys()]  # builds the table of contents

    def _read(self, key: str) -> bytes:
        return self._box.get_bytes(int(key))

    def _where(self, index: int, key: str) -> str:
        return f"{self.path.name} message #{index + 1}"


class MaildirSource(MailSource):
    kind = "maildir"

    def _list(self) -> list[str]:
        self._box = mailbox.Maildir(self.path, factory=None, create=False)
        return sorted(self._box.keys())

    def _read(self, key: str) -> bytes:
        return self._box.get_bytes(key)


class EmlSource(MailSource):
    kind = "eml"

    def _list(self) -> list[str]:
        if self.path.is_file():
            return [str(self.path)]
        return sorted(str(p) for p in self.path.rglob("*.eml") if p.is_file())

    def _read(self, key: str) -> bytes:
        return Path(key).read_bytes()


def open_source(path: Path, kind: str = "auto") -> MailSource:
    """The source at ``path``; ``auto``: a Maildir has cur/ and new/, a file is an mbox
    unless it ends in .eml, any other folder holds .eml files."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if kind == "auto":
        if path.is_dir():
            kind = "maildir" if (path / "cur").is_dir() and (path / "new").is_dir() else "eml"
        else:
            kind = "eml" if path.suffix.lower() == ".eml" else "mbox"
    return {"mbox": MboxSource, "maildir": MaildirSource, "eml": EmlSource}[kind](path)
