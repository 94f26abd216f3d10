"""Reference tags: markers survive mail clients, forgeries fail without a lookup, keys rotate."""

from __future__ import annotations

import base64
import random
import re

import pytest

from engine.tags import (
    ALPHABET,
    SealedTag,
    TagKeys,
    find_markers,
    generate_secret,
    seal,
    strip_markers,
    unseal,
    verify,
    with_marker,
)

SECRET_A = base64.urlsafe_b64encode(bytes(range(32))).decode()
SECRET_B = base64.urlsafe_b64encode(bytes(range(100, 140))).decode()
VALUES = {"interaction": 4711, "agent": "ann", "account": "support", "thread": 17,
          "sr": "SR-2026-0042", "custom.contract": "Gold ✓"}
SHAPE = re.compile(rf"\[#PD-[{ALPHABET}]{{17,18}}\]")


@pytest.fixture
def keys() -> TagKeys:
    return TagKeys.from_config({"a": SECRET_A}, "a")


@pytest.fixture
def tag(keys: TagKeys) -> SealedTag:
    return seal(VALUES, keys)


def flip(marker: str, index: int) -> str:
    """``marker`` with the symbol at ``index`` replaced by the next one of the alphabet."""
    symbol = ALPHABET[(ALPHABET.index(marker[index]) + 1) % len(ALPHABET)]
    return marker[:index] + symbol + marker[index + 1:]


def test_round_trip(keys: TagKeys, tag: SealedTag) -> None:
    assert verify(tag.marker, keys) == tag.reference
    assert unseal(tag.blob, tag.reference, keys) == {k: str(v) for k, v in VALUES.items()}


def test_marker_is_compact_and_shaped(tag: SealedTag) -> None:
    long_id = seal(VALUES, TagKeys.from_config({"z9": SECRET_A}, "z9"))
    assert len(tag.marker) == 23 and len(long_id.marker) == 24
    assert SHAPE.fullmatch(tag.marker) and SHAPE.fullmatch(long_id.marker)
    assert tag.marker.startswith("[#PD-A") and long_id.marker.startswith("[#PD-Z9")


def test_references_are_random(keys: TagKeys) -> None:
    tags = [seal({"n": i}, keys) for i in range(200)]
    assert len({t.reference for t in tags}) == 200
    assert len({t.marker for t in tags}) == 200


def rewrap(marker: str) -> str:
    """What a client that folds a long subject or breaks long words makes of the marker."""
    return f"{marker[:5]} {marker[5:9]}\r\n {marker[9:15]}\t{marker[15:]}"


@pytest.mark.parametrize("dress", [
    lambda m: f"Re: AW: Fwd: Order 17 is late {m}",
    lambda m: f"re: order 17 is late {m}".lower(),
    lambda m: f"RE: ORDER 17 IS LATE {m}".upper(),
    lambda m: f"Re: Order 17 is late {rewrap(m)}",
    lambda m: f"Re: Order 17 {rewrap(m).lower()} is late",
    lambda m: f"SV: {m} Order 17 is late (second try)",
    lambda m: f"Order 17{m}late",
])
def test_marker_survives_mail_clients(keys: TagKeys, tag: SealedTag, dress) -> None:
    assert find_markers(dress(tag.marker)) == [tag.marker]
    assert verify(find_markers(dress(tag.marker))[0], keys) == tag.reference


def test_confusable_letters_read_as_digits(keys: TagKeys) -> None:
    tag = next(t for t in (seal({}, keys) for _ in range(500)) if "0" in t.marker[6:])
    typed = tag.marker[:6] + tag.marker[6:].replace("0", "o").replace("1", "l")
    assert find_markers(f"Re: {typed}") == [tag.marker]
    assert verify(typed, keys) == tag.reference


def test_no_marker_and_lookalikes(keys: TagKeys, tag: SealedTag) -> None:
    assert find_markers("Re: Order 17 is late") == []
    assert find_markers("[#PD-ABC] [PD-" + tag.marker[5:] + " [#XY-" + tag.marker[5:]) == []
    assert find_markers(tag.marker[:-1] + "QQ]") == []  # longer than any key id allows
    assert find_markers(tag.marker[:-4] + "U" + tag.marker[-3:]) == []  # U is no symbol


def test_forged_markers_are_rejected(keys: TagKeys) -> None:
    rng = random.Random(7)
    for _ in range(500):
        body = "A" + "".join(rng.choice(ALPHABET) for _ in range(16))
        assert verify(f"[#PD-{body}]", keys) is None


def test_tampered_markers_are_rejected(keys: TagKeys, tag: SealedTag) -> None:
    both = TagKeys.from_config({"a": SECRET_A, "b": SECRET_B}, "a")
    for index in range(5, len(tag.marker) - 1):
        assert verify(flip(tag.marker, index), keys) is None
        assert verify(flip(tag.marker, index), both) is None  # incl. A -> B, a configured id


def test_unknown_key_id_is_rejected(tag: SealedTag) -> None:
    other = TagKeys.from_config({"b": SECRET_A}, "b")  # same secret, other id: still no
    assert verify(tag.marker, other) is None
    assert unseal(tag.blob, tag.reference, other) is None


@pytest.mark.parametrize("junk", ["", "hello", "[#PD-]", "[#PD-A]", "Re: [#PD-A1234567]"])
def test_junk_is_not_a_marker(keys: TagKeys, junk: str) -> None:
    assert verify(junk, keys) is None


def test_tampered_blob_is_rejected(keys: TagKeys, tag: SealedTag) -> None:
    for index in range(len(tag.blob)):
        bad = bytearray(tag.blob)
        bad[index] ^= 0x01
        assert unseal(bytes(bad), tag.reference, keys) is None, index
    for cut in (0, 1, 3, 15, len(tag.blob) - 1):
        assert unseal(tag.blob[:cut], tag.reference, keys) is None
    assert unseal(tag.blob + b"\0", tag.reference, keys) is None


def test_blob_is_bound_to_its_reference(keys: TagKeys, tag: SealedTag) -> None:
    other = seal(VALUES, keys)
    assert unseal(tag.blob, other.reference, keys) is None
    assert unseal(other.blob, tag.reference, keys) is None
    assert unseal(tag.blob, "not a reference", keys) is None
    assert unseal(tag.blob, tag.reference.lower(), keys) is not None  # case does not matter


def test_rotation(tag: SealedTag) -> None:
    rotated = TagKeys.from_config({"a": SECRET_A, "b": SECRET_B}, "b")
    assert verify(tag.marker, rotated) == tag.reference
    assert unseal(tag.blob, tag.reference, rotated) is not None
    new = seal(VALUES, rotated)
    assert new.marker.startswith("[#PD-B") and verify(new.marker, rotated) == new.reference
    retired = TagKeys.from_config({"b": SECRET_B}, "b")
    assert verify(tag.marker, retired) is None
    assert unseal(tag.blob, tag.reference, retired) is None
    assert unseal(new.blob, new.reference, retired) == unseal(new.blob, new.reference, rotated)


def test_forwarded_chain_lists_newest_first(keys: TagKeys) -> None:
    old, mid, new = (seal({"n": i}, keys) for i in range(3))
    subject = f"Fwd: Re: Order 17 {old.marker} Fwd: {rewrap(mid.marker)} Re: {new.marker}"
    assert find_markers(subject) == [new.marker, mid.marker, old.marker]
    assert [verify(m, keys) for m in find_markers(subject)] == [new.reference, mid.reference,
                                                                 old.reference]
    # Each marker once, at its rightmost place.
    subject = f"Fwd: {old.marker.lower()} Re: {new.marker} (was {old.marker})"
    assert find_markers(subject) == [old.marker, new.marker]


def test_generate_secret() -> None:
    secret = generate_secret()
    assert len(base64.urlsafe_b64decode(secret)) == 32 and secret != generate_secret()
    assert TagKeys.from_config({"k1": secret.rstrip("=")}, "k1").current == "k1"


@pytest.mark.parametrize(("mapping", "current", "message"), [
    ({}, "a", "no keys configured"),
    ({"a": SECRET_A}, "b", "current key id 'b' is not configured"),
    ({"a": "not base64!"}, "a", "key 'a': secret is not URL-safe base64"),
    ({"a": base64.urlsafe_b64encode(b"x" * 31).decode()}, "a", "31 bytes, needs at least 32"),
    ({"abc": SECRET_A}, "abc", "key id 'abc': use 1-2 characters"),
    ({"A": SECRET_A}, "A", "key id 'A'"),
    ({"o": SECRET_A}, "o", "except i, l, o, u"),
    ({"": SECRET_A}, "", "key id ''"),
])
def test_from_config_errors(mapping: dict[str, str], current: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TagKeys.from_config(mapping, current)


def test_from_config_collects_all_problems_and_hides_secrets() -> None:
    short = base64.urlsafe_b64encode(b"s3cr3t-s3cr3t").decode()
    with pytest.raises(ValueError) as caught:
        TagKeys.from_config({"a": short, "bad!": SECRET_A}, "c")
    text = str(caught.value)
    assert "key 'a'" in text and "'bad!'" in text and "'c' is not configured" in text
    assert short not in text and SECRET_A not in text


def test_keys_direct_construction_and_repr() -> None:
    with pytest.raises(ValueError, match="needs at least 32"):
        TagKeys({"a": b"short"}, "a")
    keys = TagKeys({"a": bytes(range(32))}, "a")
    assert "keys=" not in repr(keys) and repr(bytes(range(32))) not in repr(keys)
    mac_key = keys._material("a")[0]
    assert mac_key != bytes(range(32)) and len(mac_key) == 32
    assert keys._material("b") is None


def test_seal_rejects_values_it_cannot_carry(keys: TagKeys) -> None:
    for bad in ({"a": 1.5}, {"a": None}, {"a": True}, {"a": ["x"]}):
        with pytest.raises(TypeError):
            seal(bad, keys)
    with pytest.raises(ValueError):
        seal({"": "x"}, keys)


def test_strip_markers(tag: SealedTag) -> None:
    assert strip_markers(f"Re: Order 17 {tag.marker}") == "Re: Order 17"
    assert strip_markers(f"Re: Order {rewrap(tag.marker).lower()}  17") == "Re: Order 17"
    assert strip_markers(f"{tag.marker} Order {tag.marker}") == "Order"
    assert strip_markers(tag.marker) == ""
    assert strip_markers(f"Fwd: {tag.marker}  Re:\t{tag.marker} Order") == "Fwd: Re: Order"
    assert strip_markers("  Order [#XY-1234] 17 ") == "  Order [#XY-1234] 17 "  # not ours


def test_with_marker(keys: TagKeys, tag: SealedTag) -> None:
    assert with_marker("Order 17", tag.marker) == f"Order 17 {tag.marker}"
    assert with_marker("", tag.marker) == tag.marker
    newer = seal(VALUES, keys)
    replied = with_marker(f"Re: Order 17 {tag.marker.lower()}", newer.marker)
    assert replied == f"Re: Order 17 {newer.marker}"
    assert with_marker(replied, newer.marker) == replied
    assert with_marker("Order 17", newer.marker.lower()) == f"Order 17 {newer.marker}"
    with pytest.raises(ValueError, match="not a Postdesk tag marker"):
        with_marker("Order 17", "[#PD-nope]")


def random_text(rng: random.Random, low: int, high: int) -> str:
    alphabet = "abcXYZ019 _-.:/@#[]äöü€✓漢字\t"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def test_random_values_round_trip() -> None:
    rng = random.Random(20261101)
    keys = TagKeys.from_config({"a": SECRET_A, "7x": SECRET_B}, "7x")
    for _ in range(500):
        values: dict[str, str | int] = {
            random_text(rng, 1, 12): rng.choice([random_text(rng, 0, 40),
                                                 rng.randint(-(2**63), 2**63)])
            for _ in range(rng.randint(0, 12))}
        tag = seal(values, keys)
        subject = with_marker(f"{rng.choice(['', 'Re: ', 'AW: Fwd: '])}"
                              f"{random_text(rng, 0, 60)}", tag.marker)
        assert len(tag.marker) <= 24
        assert find_markers(subject.lower()) == [tag.marker]
        assert verify(find_markers(subject)[0], keys) == tag.reference
        assert unseal(tag.blob, tag.reference, keys) == {k: str(v) for k, v in values.items()}


def test_long_whitespace_runs_stay_cheap(tag: SealedTag) -> None:
    # A regex with unbounded \s* around the marker is quadratic here (seconds, not ms).
    subject = " " * 200_000 + tag.marker + " " * 200_000 + "[#PD-" + "a " * 100_000
    assert find_markers(subject) == [tag.marker]
    assert strip_markers(subject) == "[#PD-" + "a " * 100_000


def test_keys_travel_to_a_writer_process_by_pickle() -> None:
    import pickle

    keys = TagKeys.from_config({"k1": generate_secret()}, "k1")
    again = pickle.loads(pickle.dumps(keys))
    tag = seal({"agent": "alice"}, keys)
    assert unseal(tag.blob, verify(tag.marker, again), again) == {"agent": "alice"}
