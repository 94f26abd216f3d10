"""Reference tags: the marker in an outbound subject that leads a reply home (pipeline step 2).

Every outbound mail carries a marker at the end of its subject. When the customer replies,
``find_markers`` picks it out of the subject, ``verify`` checks it without touching the
database, and the caller loads the blob stored under the returned reference and opens it with
``unseal`` to get the interaction's key/values (interaction id, agent, account, thread, service
request number, per-account custom keys). Pure: no database, no I/O; the caller stores blobs.

Format
------
``[#PD-`` key id, reference, MAC ``]``, for example ``[#PD-A7K3M9QX2TAB4F0E9]``:

* alphabet: Crockford base32 (``0-9 A-Z`` without ``I L O U``), read case-insensitively with
  ``I``/``L`` taken as ``1`` and ``O`` as ``0``, so clients that change case or retype the
  subject keep it; whitespace inside the marker (a client rewrapping a long subject, RFC 5322
  2.2.3 folding) is ignored;
* key id: 1-2 characters (configured lower-case, written upper-case);
* reference: 10 characters = 50 random bits, the lookup key the caller stores the blob under;
* MAC: 6 characters = the first 30 bits of HMAC-SHA-256(mac key, ``PD1|kid|reference``).

The whole marker is 23 characters (24 with a two-character key id). The blob is
``version(1) | len(kid)(1) | kid | nonce(12) | AES-256-GCM(JSON of the values)`` with the
header and the reference as associated data, so a blob cannot be moved to another reference
or key id. Both keys come from one configured secret per key id through HKDF-SHA-256 with
distinct ``info`` labels (RFC 5869 section 3.2), so no key serves two purposes.

Security
--------
* A forged or altered marker (random characters, one character changed, another configured key
  id) passes ``verify`` with probability 2**-30 (about 1 in 10**9). Checking a guess needs the
  secret, so there is no offline attack: every try is one mail delivered to us, logged, and
  a passing forgery still names a reference that exists with probability only N / 2**50.
  Attaching a mail to somebody else's interaction without having seen its marker succeeds
  with probability N * 2**-80 per mail (N = stored tags; 2**-50 even at N = 10**9).
* An attacker who sees many markers (a customer, a list archive) learns key ids and
  references of those mails and nothing else: the values never leave the server and are
  encrypted anyway; HMAC is a PRF, so the MACs seen do not help to compute the MAC of another
  reference; references are random, so they leak neither counts nor order (unlike sequential
  ticket numbers). What the attacker CAN do is replay a marker they hold: a marker is a
  pointer, not proof of who sent the mail, so threading still checks the sender took part.
* References are random, not unique by construction: a new tag collides with one of N stored
  ones with probability N / 2**50 (10**-7 at N = 10**8). Store blobs under a unique
  constraint and seal again on conflict.
* AES-GCM nonces are 96 random bits; one key is good for 2**32 blobs (NIST SP 800-38D 8.3),
  about 11,000 years at a million mails a day.

Key rotation
------------
1. ``generate_secret()``, add it under a new key id (never reuse an id) next to the old one,
   keep ``current`` on the old id and reload every process (gateway, console, outbox), so all
   of them can verify the new key before any of them issues it.
2. Set ``current`` to the new id and reload: new tags use it; old tags still verify and unseal.
3. When replies to old mails no longer matter (or at once, if the old secret leaked), remove
   the old id: its markers are rejected and its blobs no longer open; such replies fall back
   to the other threading signals (In-Reply-To, References, subject).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
PREFIX = "[#PD-"
REF_CHARS, MAC_CHARS = 10, 6
REF_BITS, MAC_BITS = REF_CHARS * 5, MAC_CHARS * 5
MIN_SECRET_BYTES = 32
_BODY = REF_CHARS + MAC_CHARS
_VERSION = 1
_NONCE_BYTES = 12
_MAC_INFO = b"postdesk tag v1 mac"
_AEAD_INFO = b"postdesk tag v1 aead"
_KEY_ID = re.compile(r"[0-9a-hjkmnp-tv-z]{1,2}")
_REFERENCE = re.compile(rf"[{ALPHABET}]{{{REF_CHARS}}}")
_READ_AS = str.maketrans("ILO", "110")  # Crockford: readers may type I/L for 1, O for 0
_SPACE = re.compile(r"\s+")
# Any symbol but U (I, L, O are read as digits), whitespace allowed between symbols.
_MARKER = re.compile(
    rf"\[\s*#\s*p\s*d\s*-\s*((?:[0-9a-tv-z]\s*){{{_BODY + 1},{_BODY + 2}}})\]", re.IGNORECASE)


@dataclass(frozen=True)
class TagKeys:
    """Secrets by key id (each >= 32 bytes) and the id new tags are made with."""

    keys: dict[str, bytes] = field(repr=False)
    current: str
    _derived: dict[str, tuple[bytes, AESGCM]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = _id_problems(list(self.keys), self.current)
        problems += [p for kid, secret in self.keys.items() if (p := _secret_problem(kid, secret))]
        if problems:
            raise ValueError("tag keys: " + "; ".join(problems))
        derived = {kid: (_derive(secret, _MAC_INFO), AESGCM(_derive(secret, _AEAD_INFO)))
                   for kid, secret in self.keys.items()}
        object.__setattr__(self, "keys", dict(self.keys))
        object.__setattr__(self, "_derived", derived)

    @classmethod
    def from_config(cls, mapping: dict[str, str], current: str) -> TagKeys:
        """Build from ``{key id: URL-safe base64 secret}``; all problems in one ValueError."""
        problems = _id_problems(list(mapping), current)
        decoded: dict[str, bytes] = {}
        for kid, text in mapping.items():
            try:
                decoded[kid] = _decode_secret(text)
            except ValueError:
                problems.append(f"key {kid!r}: secret is not URL-safe base64 "
                                "(make one with engine.tags.generate_secret())")
                continue
            if problem := _secret_problem(kid, decoded[kid]):
                problems.append(problem)
        if problems:
            raise ValueError("tag keys: " + "; ".join(problems))
        return cls(decoded, current)

    def __reduce__(self) -> tuple[type[TagKeys], tuple[dict[str, bytes], str]]:
        # picklable for the intake's writer process: derive the keys again over there
        return (TagKeys, (self.keys, self.current))

    def _material(self, kid: str) -> tuple[bytes, AESGCM] | None:
        """The (MAC key, AEAD) derived for a key id, or None if it is not configured."""
        return self._derived.get(kid)


@dataclass(frozen=True)
class SealedTag:
    """What ``seal`` makes: the subject marker, and the blob to store under ``reference``."""

    marker: str
    reference: str
    blob: bytes


def generate_secret() -> str:
    """A new secret for the configuration: URL-safe base64 of 32 random bytes."""
    return base64.urlsafe_b64encode(secrets.token_bytes(MIN_SECRET_BYTES)).decode("ascii")


def seal(values: dict[str, str | int], keys: TagKeys) -> SealedTag:
    """Make a marker with the current key and the encrypted blob of ``values`` (ints as text)."""
    plaintext = _serialise(values)
    kid = keys.current
    mac_key, aead = keys._derived[kid]  # current is always configured
    reference = _encode(secrets.randbits(REF_BITS), REF_CHARS)
    marker = f"{PREFIX}{kid.upper()}{reference}{_mac(mac_key, kid, reference)}]"
    header = bytes([_VERSION, len(kid)]) + kid.encode("ascii")
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = aead.encrypt(nonce, plaintext, header + reference.encode("ascii"))
    return SealedTag(marker, reference, header + nonce + sealed)


def find_markers(subject: str) -> list[str]:
    """Normalised markers in ``subject``, newest (rightmost) first, each once."""
    found: list[str] = []
    for match in reversed(list(_MARKER.finditer(subject))):
        marker = f"{PREFIX}{_canonical(match.group(1))}]"
        if marker not in found:
            found.append(marker)
    return found


def verify(marker: str, keys: TagKeys) -> str | None:
    """The reference if the marker's MAC checks out under its key id, else None."""
    match = _MARKER.fullmatch(marker.strip())
    if match is None:
        return None
    body = _canonical(match.group(1))
    kid, reference, mac = body[:-_BODY].lower(), body[-_BODY:-MAC_CHARS], body[-MAC_CHARS:]
    material = keys._material(kid)
    if material is None:
        return None
    return reference if hmac.compare_digest(_mac(material[0], kid, reference), mac) else None


def unseal(blob: bytes, reference: str, keys: TagKeys) -> dict[str, str] | None:
    """The values sealed in ``blob`` for ``reference``; None if tampered, moved or key unknown."""
    reference = _canonical(reference) if isinstance(reference, str) else ""
    parts = _split_blob(bytes(blob))
    if parts is None or not _REFERENCE.fullmatch(reference):
        return None
    header, kid, nonce, sealed = parts
    material = keys._material(kid)
    if material is None:
        return None
    try:
        plaintext = material[1].decrypt(nonce, sealed, header + reference.encode("ascii"))
    except InvalidTag:
        return None
    return json.loads(plaintext)


def strip_markers(subject: str) -> str:
    """``subject`` without our markers (and the spaces around them), for display and threads."""
    # Cut at the markers and trim only the cut edges (a regex with \s* around the marker would
    # be quadratic on long runs of whitespace).
    spans = [match.span() for match in _MARKER.finditer(subject)]
    if not spans:
        return subject
    starts, ends = [0] + [end for _, end in spans], [start for start, _ in spans] + [len(subject)]
    pieces = [subject[start:end] for start, end in zip(starts, ends, strict=True)]
    pieces = [pieces[0].rstrip(), *(piece.strip() for piece in pieces[1:-1]), pieces[-1].lstrip()]
    return " ".join(piece for piece in pieces if piece)


def with_marker(subject: str, marker: str) -> str:
    """``subject`` with ``marker`` appended once, replacing any marker of ours already there."""
    match = _MARKER.fullmatch(marker.strip())
    if match is None:
        raise ValueError(f"not a Postdesk tag marker: {marker!r}")
    canonical = f"{PREFIX}{_canonical(match.group(1))}]"
    base = strip_markers(subject)
    return f"{base} {canonical}" if base else canonical


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _mac(mac_key: bytes, kid: str, reference: str) -> str:
    digest = hmac.new(mac_key, f"PD1|{kid}|{reference}".encode("ascii"), hashlib.sha256).digest()
    return _encode(int.from_bytes(digest[:8], "big") >> (64 - MAC_BITS), MAC_CHARS)


def _encode(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 32)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def _canonical(text: str) -> str:
    return _SPACE.sub("", text).upper().translate(_READ_AS)


def _serialise(values: dict[str, str | int]) -> bytes:
    clean: dict[str, str] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"tag value names must be non-empty strings, not {name!r}")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise TypeError(f"tag value {name!r} must be str or int, not {type(value).__name__}")
        clean[name] = str(value)
    return json.dumps(clean, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def _split_blob(blob: bytes) -> tuple[bytes, str, bytes, bytes] | None:
    if len(blob) < 2 or blob[0] != _VERSION or blob[1] not in (1, 2):
        return None
    end = 2 + blob[1]
    try:
        kid = blob[2:end].decode("ascii")
    except UnicodeDecodeError:
        return None
    nonce, sealed = blob[end:end + _NONCE_BYTES], blob[end + _NONCE_BYTES:]
    if len(nonce) != _NONCE_BYTES or len(sealed) < 16:
        return None
    return blob[:end], kid, nonce, sealed


def _decode_secret(text: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError("secret must be a string")
    data = text.strip()
    return base64.b64decode(data + "=" * (-len(data) % 4), altchars=b"-_", validate=True)


def _id_problems(ids: list[str], current: str) -> list[str]:
    problems = [f"key id {kid!r}: use 1-2 characters of 0-9 and a-z except i, l, o, u "
                "(mail readers confuse them with 1 and 0)"
                for kid in ids if not isinstance(kid, str) or not _KEY_ID.fullmatch(kid)]
    if not ids:
        problems.append("no keys configured (make a secret with engine.tags.generate_secret())")
    elif current not in ids:
        problems.append(f"current key id {current!r} is not configured "
                        f"(configured: {', '.join(map(repr, ids))})")
    return problems


def _secret_problem(kid: str, secret: bytes) -> str | None:
    if not isinstance(secret, bytes):
        return f"key {kid!r}: secret must be bytes"
    if len(secret) < MIN_SECRET_BYTES:
        return (f"key {kid!r}: secret has {len(secret)} bytes, needs at least "
                f"{MIN_SECRET_BYTES} (make one with engine.tags.generate_secret())")
    return None
