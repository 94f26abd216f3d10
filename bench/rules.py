"""Rule evaluation benchmark: per-message cost of ``rules.evaluate`` as the rule set grows.

Sits beside the pipeline step ``rules.evaluate(ruleset, facts)``: it loads synthetic rule sets
of 10, 100 and 1,000 rules through ``load_rules`` (mostly ``contains`` keywords over subject
and body, ~10% ``matches`` regexes, any/all/not combinators, spread over classification,
routing and document-retrieval) and evaluates a corpus of synthetic messages (facts shaped
like ``engine.facts.message_facts``, bodies 0.5-5 KB) against each, in one run.

For every size it reports the optimised evaluation (``evaluate``, the trace built on first
read), the same plus reading the trace and ``to_json`` (what the intake stores), and the
baseline measured in the same run: the straightforward evaluator (``evaluate_reference``).
Every decision is compared with the baseline's; ``mismatches`` must be 0. Garbage collection
is paused while timing (as ``timeit`` does) and run between blocks.

Wall time on a shared machine moves with its neighbours, and the large rule set's working
set (the keyword automaton, a thousand rules' compiled tests) suffers more from a busy
cache than the small one's: the same code measured ``ratio_1000_to_10`` 4.7-8.7 in one
hour. ``--instructions`` adds a figure that does not move: each size's evaluation run under
valgrind (callgrind), counting CPU instructions per message over two passes of the corpus
(start-up and compiling left out). It leaves out what instructions do not show, cache
misses and system calls, so it is a floor, not the wall ratio.

Usage: ``python bench/rules.py [--messages N] [--rounds R] [--seed S] [--instructions]``;
prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import pickle
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script, bench/ must not shadow the rules package

from bench.benchkit import percentile  # noqa: E402
from rules.evaluate import evaluate, evaluate_reference  # noqa: E402
from rules.schema import RuleSet, load_rules  # noqa: E402

SIZES = (10, 100, 1000)
ACCOUNT = "support"

# --------------------------------------------------------------------------- vocabulary



def words(text: str) -> list[str]:
    return text.split()


NOUNS = words(
    "invoice order refund payment account password login shipment parcel delivery tracking "
    "warranty repair replacement subscription cancellation upgrade downgrade license contract "
    "quote discount coupon voucher receipt statement balance charge fee tax vat address "
    "profile email phone battery charger screen cable adapter keyboard printer router modem "
    "firmware update driver installation setup manual guide tutorial appointment booking "
    "reservation ticket complaint feedback review rating survey newsletter unsubscribe "
    "privacy gdpr deletion export invoice-copy credit debit transfer iban swift paypal card "
    "pin token certificate backup restore sync outage downtime latency error crash bug "
    "feature request roadmap pricing plan trial renewal invoice-number order-number serial "
    "model catalogue brochure sample stock availability backorder preorder customs duty "
    "return label courier pickup dispatch warehouse damage defect missing broken leak noise"
)
VERBS = words(
    "cancel return exchange reset change update confirm verify activate deactivate "
    "replace repair refund ship track renew upgrade downgrade delete export close open "
    "transfer pay charge book reschedule"
)
ADJECTIVES = words("urgent wrong late damaged missing double expired locked blocked failed "
                   "overdue broken slow new old faulty")
FILLER = (
    "Hello team, I hope you are well.", "Thanks in advance for your help.",
    "I have been a customer for several years and never had a problem before.",
    "Please get back to me as soon as possible.", "Kind regards and have a nice day.",
    "I tried calling but nobody picked up the phone.", "Let me know if you need anything else.",
    "My colleague suggested I write to this address.", "This is the second time I write.",
    "I attached a screenshot that shows what I mean.", "Best wishes from Lyon.",
    "Mit freundlichen Grüßen aus der Hauptstraße.", "İyi çalışmalar, İstanbul ofisimizden.",
    "The weather here is lovely, by the way.", "See the quoted message below for context.",
)
DOMAINS = ("customer.example", "acme-corp.example", "mail.example", "shop.example",
           "partner.example", "freemail.example", "spam.example", "bigco.example")


def vocabulary(rng: random.Random) -> list[str]:
    """Keywords rules look for: single nouns, verb+noun and adjective+noun phrases."""
    terms = list(dict.fromkeys(NOUNS))
    terms += [f"{v} {n}" for v in VERBS for n in rng.sample(NOUNS, 6)]
    terms += [f"{a} {n}" for a in ADJECTIVES for n in rng.sample(NOUNS, 8)]
    return list(dict.fromkeys(terms))


# --------------------------------------------------------------------------- rule sets

REGEXES = (
    r"\b{w}s?\b", r"\b{w}\W+{v}", r"{w}\s*(?:no\.?|number|#)\s*:?\s*\d{{4,}}",
    r"\b(?:{w}|{v})\b", r"^(?:re|fwd?):\s*{w}", r"\b{w}(?:ed|ing)?\b.*\b{v}\b",
)
NO_LITERAL_REGEXES = (r"\b\d{5,}\b", r"^\s*$", r"^[^a-z]*$")  # subject only: short


def keyword_condition(rng: random.Random, terms: list[str]) -> dict[str, Any]:
    """One keyword test: ``contains`` mostly, ``matches`` ~10% of the time."""
    key = "subject" if rng.random() < 0.35 else "body"
    if rng.random() < 0.10:
        if rng.random() < 0.1:
            return {"subject": {"matches": rng.choice(NO_LITERAL_REGEXES)}}
        w, v = (t.split()[-1] for t in rng.sample(terms, 2))
        return {key: {"matches": rng.choice(REGEXES).format(w=w, v=v)}}
    term = rng.choice(terms)
    if rng.random() < 0.03:
        return {key: {"contains": term.capitalize(), "case": "sensitive"}}
    return {key: {"contains": term}}


def rule_condition(rng: random.Random, terms: list[str]) -> dict[str, Any]:
    """1-4 keyword tests under any/all, sometimes with a sender or attachment guard."""
    count = rng.choices((1, 2, 3, 4), weights=(40, 30, 20, 10))[0]
    tests = [keyword_condition(rng, terms) for _ in range(count)]
    when: dict[str, Any] = tests[0] if count == 1 else {
        "any" if rng.random() < 0.7 else "all": tests}
    roll = rng.random()
    if roll < 0.10:
        when = {"all": [when, {"not": {"sender.domain": {"in": rng.sample(DOMAINS, 2)}}}]}
    elif roll < 0.15:
        when = {"all": [{"attachment.present": True}, when]}
    elif roll < 0.18:
        when = {"any": [when, {"attachment.name": {"ends_with": ".pdf"}}]}
    return when


def rule_documents(rng: random.Random, size: int, terms: list[str]) -> list[dict[str, Any]]:
    """``size`` rules: ~35% classification, ~35% document-retrieval, ~30% routing."""
    rules: list[dict[str, Any]] = []
    for i in range(size - 2):
        rule_type = rng.choices(("classification", "document-retrieval", "routing"),
                                weights=(35, 35, 30))[0]
        rule: dict[str, Any] = {"name": f"r{i:04d}", "type": rule_type,
                                "priority": rng.randrange(10, 200, 10),
                                "when": rule_condition(rng, terms)}
        if rng.random() < 0.1:
            rule["accounts"] = [rng.choice((ACCOUNT, "sales"))]
        if rule_type == "classification":
            rule["classification"] = f"class-{rng.randrange(40)}"
        elif rule_type == "document-retrieval":
            rule["documents"] = [f"doc-{rng.randrange(500)}"]
        else:
            rule["route"] = {"group": f"group-{rng.randrange(30)}"}
        rules.append(rule)
    rules.append({"name": "general", "type": "classification", "priority": 1000,
                  "classification": "general"})
    rules.append({"name": "default-route", "type": "routing", "priority": 1000,
                  "when": {"classification": {"not_equals": "spam"}},
                  "route": {"group": "first-line"}})
    return rules


def build_ruleset(size: int, seed: int = 1, directory: Path | None = None) -> RuleSet:
    """Write a ``size``-rule file and load it the way the gateway does."""
    rng = random.Random(f"rules-{seed}-{size}")
    terms = vocabulary(random.Random(f"vocabulary-{seed}"))  # the corpus's words too
    text = yaml.safe_dump({"version": 1, "rules": rule_documents(rng, size, terms)},
                          sort_keys=False, allow_unicode=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(directory or tmp) / f"rules-{size}.yaml"
        path.write_text(text, encoding="utf-8")
        return load_rules([path])


# --------------------------------------------------------------------------- messages


def sentence(rng: random.Random, terms: list[str]) -> str:
    if rng.random() < 0.45:
        return rng.choice(FILLER)
    term = rng.choice(terms)
    shapes = (f"I need help with the {term}, it does not work as expected.",
              f"Could you check my {term} please?",
              f"The {term} from last week is still not sorted out.",
              f"Regarding {term} number {rng.randrange(10**4, 10**6)}, nothing happened.",
              f"Why is the {term} {rng.choice(ADJECTIVES)} again?")
    return rng.choice(shapes)


def message_facts(rng: random.Random, terms: list[str], index: int) -> dict[str, Any]:
    """Facts for one synthetic message, keyed as ``engine.facts.message_facts`` keys them."""
    target = rng.choice((500, 900, 1500, 2500, 3500, 5000))
    lines: list[str] = []
    while sum(len(line) + 1 for line in lines) < target:
        lines.append(" ".join(sentence(rng, terms) for _ in range(rng.randint(1, 4))))
    body = "\n".join(lines)[:target]
    topic = rng.choice(terms)
    subject = rng.choice((f"{topic.capitalize()} problem", f"RE: {topic}",
                          f"Question about my {topic} #{rng.randrange(10**5)}",
                          f"URGENT: {topic} {rng.choice(ADJECTIVES)}", "Hello"))
    domain = rng.choice(DOMAINS)
    received = dt.datetime(2024, 3, 1, 8) + dt.timedelta(minutes=37 * index)
    names = [f"scan-{index}.pdf"] if rng.random() < 0.2 else []
    return {
        "sender.address": f"user{index}@{domain}", "sender.domain": domain,
        "sender.name": f"User {index}", "to": ["support@desk.example"], "cc": [],
        "recipient.account": [ACCOUNT], "subject": subject, "body": body,
        "size": len(body.encode()) + 900, "received.date": received.date(),
        "received.time": received.strftime("%H:%M"),
        "received.weekday": ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[
            received.weekday()],
        "attachment.present": bool(names),
        "attachment.type": ["application/pdf"] * len(names), "attachment.name": names,
        "language": None, "charset": "utf-8", "classification": None, "intent": None,
        "thread.known": subject.startswith("RE:"),
    }


def build_corpus(count: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(f"corpus-{seed}")
    terms = vocabulary(random.Random(f"vocabulary-{seed}"))
    return [message_facts(rng, terms, i) for i in range(count)]


# --------------------------------------------------------------------------- measuring



VARIANTS: dict[str, Callable[[RuleSet, Mapping[str, Any]], Any]] = {
    "fast": lambda rs, facts: evaluate(rs, facts, ACCOUNT),
    "baseline": lambda rs, facts: evaluate_reference(rs, facts, ACCOUNT),
    "fast_json": lambda rs, facts: evaluate(rs, facts, ACCOUNT).to_json(),
    "baseline_json": lambda rs, facts: evaluate_reference(rs, facts, ACCOUNT).to_json(),
}


def sample(rulesets: dict[int, RuleSet], corpus: list[dict[str, Any]],
           rounds: int) -> dict[tuple[int, str], list[float]]:
    """Microseconds per message for every (size, variant). Each round runs every variant
    over the whole corpus in turn (the baseline in the same run, DESIGN), rounds alternate
    the order so that a drifting machine is spread over all of them."""
    samples: dict[tuple[int, str], list[float]] = {
        (size, name): [] for size in rulesets for name in VARIANTS}
    blocks = [(size, name) for size in rulesets for name in VARIANTS]
    clock = time.perf_counter_ns
    gc.disable()  # as timeit does; collected between blocks, off the clock
    try:
        for round_ in range(rounds):
            for size, name in blocks[::-1] if round_ % 2 else blocks:
                run, ruleset, into = VARIANTS[name], rulesets[size], samples[size, name]
                for facts in corpus:
                    start = clock()
                    run(ruleset, facts)
                    into.append((clock() - start) / 1000)
                gc.collect()
    finally:
        gc.enable()
    return samples


def prepare(size: int, corpus: list[dict[str, Any]],
            seed: int) -> tuple[RuleSet, dict[str, Any]]:
    """Load and compile one rule set; count decisions differing from the baseline's."""
    ruleset = build_ruleset(size, seed)
    start = time.perf_counter()
    evaluate(ruleset, corpus[0], ACCOUNT)  # compiles the rule set once
    compile_ms = (time.perf_counter() - start) * 1000
    mismatches = sum(evaluate(ruleset, f, ACCOUNT).to_json()
                     != evaluate_reference(ruleset, f, ACCOUNT).to_json() for f in corpus)
    return ruleset, {"rules": len(ruleset.rules), "compile_ms": round(compile_ms, 1),
                     "mismatches": mismatches}


def cell(info: dict[str, Any], samples: dict[str, list[float]], n: int,
         rounds: int) -> dict[str, Any]:
    p50 = {name: percentile(values, 50) for name, values in samples.items()}
    return {
        "rules": info["rules"], "messages": n, "rounds": rounds,
        "us_per_msg_p50": round(p50["fast"], 1),
        "us_per_msg_p99": round(percentile(samples["fast"], 99), 1),
        "baseline_us_per_msg_p50": round(p50["baseline"], 1),
        "baseline_us_per_msg_p99": round(percentile(samples["baseline"], 99), 1),
        "speedup_p50": round(p50["baseline"] / p50["fast"], 2),
        "with_trace_json_us_p50": round(p50["fast_json"], 1),
        "baseline_with_trace_json_us_p50": round(p50["baseline_json"], 1),
        "compile_ms": info["compile_ms"], "mismatches": info["mismatches"],
    }


def instructions(rulesets: list[RuleSet], corpus: list[dict[str, Any]],
                 passes: int = 2) -> list[float]:
    """CPU instructions per message of ``evaluate`` for each rule set (valgrind's count,
    deterministic), in one valgrind run.

    The child calls ``time.sleep(0)`` before its first rule set's passes and after each
    rule set's; callgrind writes its count and starts afresh before every call, so each
    dump after the first holds one rule set's passes alone (start-up and compiling the
    rule sets are left out)."""
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "input.pickle", Path(tmp) / "callgrind.out"
        data.write_bytes(pickle.dumps((rulesets, corpus)))
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             "--dump-before=time_sleep", sys.executable, __file__,
             "--count-passes", str(passes), str(data)],
            capture_output=True, check=True)
        counts = []
        for dump in range(2, len(rulesets) + 2):
            text = Path(f"{out}.{dump}").read_text()
            counts.append(int(re.search(r"^totals: (\d+)", text, re.MULTILINE)[1]))  # type: ignore[index]
        return [count / (passes * len(corpus)) for count in counts]


def _count_passes(passes: int, data: Path) -> None:
    """The child ``instructions`` runs under valgrind: compile and one pass, then the
    counted passes."""
    rulesets, corpus = pickle.loads(data.read_bytes())
    for ruleset in rulesets:  # a pass unseen: what the first search of a pattern works out
        for facts in corpus:  # once (rules.regexguard, rules.regexsplit) is not per message
            evaluate(ruleset, facts, ACCOUNT)
    gc.disable()
    time.sleep(0)  # callgrind dumps here: what came before is not counted
    for ruleset in rulesets:
        for _ in range(passes):
            for facts in corpus:
                evaluate(ruleset, facts, ACCOUNT)
        time.sleep(0)  # and here: the dump holds this rule set's passes alone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions per message under valgrind (slow)")
    parser.add_argument("--count-passes", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count_passes:
        _count_passes(int(args.count_passes[0]), Path(args.count_passes[1]))
        return 0
    if args.instructions and shutil.which("valgrind") is None:
        parser.error("--instructions needs valgrind (Debian: apt-get install valgrind)")
    corpus = build_corpus(max(args.messages, 1), args.seed)
    rounds = max(args.rounds, 1)
    prepared = {size: prepare(size, corpus, args.seed) for size in SIZES}
    samples = sample({size: rs for size, (rs, _) in prepared.items()}, corpus, rounds)
    cells = [cell(info, {name: samples[size, name] for name in VARIANTS}, len(corpus), rounds)
             for size, (_, info) in prepared.items()]
    by_size = dict(zip(SIZES, cells, strict=True))
    result = {
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
        "cells": cells,
        "ratio_1000_to_10": round(by_size[SIZES[-1]]["us_per_msg_p50"]
                                  / by_size[SIZES[0]]["us_per_msg_p50"], 2),
        "baseline_ratio_1000_to_10": round(by_size[SIZES[-1]]["baseline_us_per_msg_p50"]
                                           / by_size[SIZES[0]]["baseline_us_per_msg_p50"], 2),
    }
    if args.instructions:  # a smaller corpus: under valgrind a pass is ~50x slower
        counted = corpus[:100]
        per_message = dict(zip(prepared, instructions(
            [rs for rs, _ in prepared.values()], counted), strict=True))
        result["instructions_per_msg"] = {str(k): round(v) for k, v in per_message.items()}
        result["instructions_ratio_1000_to_10"] = round(
            per_message[SIZES[-1]] / per_message[SIZES[0]], 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
