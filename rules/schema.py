"""The rule file format (``version: 1``): YAML in, a validated ``RuleSet`` out.

Every problem is collected with its file, line, column and key path and a hint (the nearest
valid name for a typo), so ``postdesk rules check`` shows them all at once. The YAML node
tree is walked directly, which keeps a position for every value. Pure: reads only the files
it is given.
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regex
import yaml

from rules.conditions import OPERATORS, all_key_names, coerce_operand, key_for
from rules.params import ParamReaders

SUPPORTED_VERSIONS = (1,)
# Rule types in the order they are evaluated (Oracle Email Center's processing order).
RULE_TYPES = ("reject", "classification", "auto-delete", "auto-acknowledge", "auto-process",
              "auto-redirect", "auto-reply", "document-retrieval", "routing")
COMMON_KEYS = ("name", "type", "accounts", "priority", "when", "enabled", "description")
TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "reject": ("message",), "classification": ("classification",), "auto-delete": (),
    "auto-acknowledge": ("template", "limit"), "auto-process": ("service_request", "procedure"),
    "auto-redirect": ("to", "mode"), "auto-reply": ("template", "limit"),
    "document-retrieval": ("documents",), "routing": ("route",),
}
TOP_KEYS = ("version", "rules", "parsers", "custom_tags", "procedure_timeout_ms")


@dataclass(frozen=True)
class Where:
    file: str
    line: int
    column: int


@dataclass
class RuleError:
    """One problem in a rule file: ``file:line:column: key.path: message (hint)``."""

    where: Where
    key: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        hint = f" ({self.hint})" if self.hint else ""
        key = f"{self.key}: " if self.key else ""
        return f"{self.where.file}:{self.where.line}:{self.where.column}: {key}{self.message}{hint}"


class RuleErrors(Exception):
    """All problems found while loading; the running rules stay in place."""

    def __init__(self, errors: list[RuleError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


@dataclass(frozen=True)
class Condition:
    key: str
    op: str
    operand: Any  # prepared: folded, compiled or coerced
    sensitive: bool
    source: str  # as written, for explain
    where: Where


@dataclass(frozen=True)
class Combinator:
    kind: str  # all | any | not
    items: tuple[Node, ...]


Node = Condition | Combinator


@dataclass(frozen=True)
class Rule:
    name: str
    type: str
    accounts: tuple[str, ...] | None  # None: every account
    priority: int
    order: int  # position in the files, breaks priority ties
    when: Node | None
    params: dict[str, Any]
    where: Where


@dataclass(frozen=True)
class ParserDef:
    """Named field extraction: a regex (group 1 or ``value``) or ``Label: value`` lines."""

    name: str
    source: str  # subject | body | any
    pattern: Any


@dataclass(frozen=True)
class CustomTagDef:
    account: str
    key: str
    source: str  # value | header | field | procedure
    argument: str


@dataclass(frozen=True)
class RuleSet:
    version: str  # content hash: recorded on every message evaluated with this set
    rules: tuple[Rule, ...] = ()
    parsers: tuple[ParserDef, ...] = ()
    custom_tags: tuple[CustomTagDef, ...] = ()
    procedure_timeout_ms: int = 500
    files: tuple[str, ...] = field(default=())

    def for_type(self, rule_type: str, account: str | None) -> list[Rule]:
        """Enabled rules of one type for an account, by priority then file order."""
        rules = [r for r in self.rules if r.type == rule_type
                 and (r.accounts is None or account is None or account in r.accounts)]
        return sorted(rules, key=lambda r: (r.priority, r.order))


EMPTY = RuleSet(version="empty")


def load_rules(paths: list[Path], accounts: set[str] | None = None) -> RuleSet:
    """Read and validate rule files; raises RuleErrors listing every problem."""
    reader = _Reader(accounts)
    digest = hashlib.sha256()
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            reader.fail(Where(str(path), 1, 1), "", f"cannot read: {exc.strerror or exc}")
            continue
        digest.update(text.encode())
        reader.read_file(str(path), text)
    if reader.errors:
        raise RuleErrors(reader.errors)
    return RuleSet(version=digest.hexdigest()[:12], rules=tuple(reader.rules),
                   parsers=tuple(reader.parsers), custom_tags=tuple(reader.tags),
                   procedure_timeout_ms=reader.timeout_ms, files=tuple(map(str, paths)))


def _hint(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(choices)}"


class _Reader(ParamReaders):
    """Walks YAML nodes, building rules and collecting located errors."""

    def __init__(self, accounts: set[str] | None):
        self.accounts = accounts
        self.errors: list[RuleError] = []
        self.rules: list[Rule] = []
        self.parsers: list[ParserDef] = []
        self.tags: list[CustomTagDef] = []
        self.timeout_ms = 500
        self.file = ""
        self.names: set[str] = set()

    def where(self, node: yaml.Node) -> Where:
        return Where(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def fail(self, where: Where | yaml.Node, key: str, message: str, hint: str = "") -> None:
        place = where if isinstance(where, Where) else self.where(where)
        self.errors.append(RuleError(place, key, message, hint))

    def read_file(self, name: str, text: str) -> None:
        self.file = name
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = Where(name, mark.line + 1, mark.column + 1) if mark else Where(name, 1, 1)
            self.fail(where, "", f"invalid YAML: {getattr(exc, 'problem', exc)}")
            return
        if not isinstance(root, yaml.MappingNode):
            self.fail(Where(name, 1, 1), "", "expected a mapping with 'version' and 'rules'")
            return
        top = self.mapping(root, "", TOP_KEYS)
        self.read_version(top.get("version"), root)
        if "procedure_timeout_ms" in top:
            self.timeout_ms = self.integer(top["procedure_timeout_ms"], "procedure_timeout_ms")
        for i, node in enumerate(self.sequence(top.get("parsers"), "parsers")):
            self.read_parser(node, f"parsers[{i}]")
        self.read_custom_tags(top.get("custom_tags"))
        for i, node in enumerate(self.sequence(top.get("rules"), "rules")):
            self.read_rule(node, f"rules[{i}]")

    # --- shapes ---------------------------------------------------------------------------

    def mapping(self, node: yaml.Node, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, path, "expected a mapping")
            return {}
        out: dict[str, Any] = {}
        for key_node, value in node.value:
            key = str(key_node.value)
            if allowed and key not in allowed:
                self.fail(key_node, _join(path, key), "unknown key", _hint(key, allowed))
            else:
                out[key] = value
        return out

    def sequence(self, node: yaml.Node | None, path: str) -> list[yaml.Node]:
        if node is None:
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, path, "expected a list")
            return []
        return list(node.value)

    def scalar(self, node: yaml.Node | None, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            if node is not None:
                self.fail(node, path, "expected a single value")
            return None
        try:
            return yaml.SafeLoader("").construct_object(node)
        except (ValueError, yaml.YAMLError) as exc:  # e.g. an impossible date: 2024-13-01
            self.fail(node, path, f"not a valid value: {exc}")
            return _INVALID

    def text(self, node: yaml.Node | None, path: str, parent: yaml.Node) -> str | None:
        if node is None:
            self.fail(parent, path, "required key is missing")
            return None
        value = self.scalar(node, path)
        return None if value is None else str(value)

    def integer(self, node: yaml.Node, path: str) -> int:
        value = self.scalar(node, path)
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(node, path, f"expected a whole number, got {value!r}")
            return 0
        return value

    def read_version(self, node: yaml.Node | None, root: yaml.Node) -> None:
        if node is None:
            self.fail(root, "version", "required key is missing", "add 'version: 1'")
        elif self.scalar(node, "version") not in SUPPORTED_VERSIONS:
            self.fail(node, "version", "unsupported version", "this Postdesk reads version 1")

    # --- parsers and custom tags -----------------------------------------------------------

    def read_parser(self, node: yaml.Node, path: str) -> None:
        spec = self.mapping(node, path, ("name", "from", "regex", "label"))
        name = self.text(spec.get("name"), f"{path}.name", node)
        source = self.scalar(spec.get("from"), f"{path}.from") if "from" in spec else "any"
        if source not in ("subject", "body", "any"):
            self.fail(spec["from"], f"{path}.from", f"unknown source {source!r}",
                      "expected subject, body or any")
        if ("regex" in spec) == ("label" in spec):
            self.fail(node, path, "give exactly one of 'regex' or 'label'")
            return
        if "regex" in spec:
            pattern = self.regex(spec["regex"], f"{path}.regex", sensitive=False)
        else:
            label = regex.escape(str(self.scalar(spec["label"], f"{path}.label")))
            pattern = OPERATORS["matches"].prepare(  # the inline (?i) ignores case
                rf"(?mi)^[ \t]*{label}[ \t]*:[ \t]*(?P<value>.+?)[ \t]*$", True)
        if name and pattern is not None:
            self.parsers.append(ParserDef(name, str(source), pattern))

    def read_custom_tags(self, node: yaml.Node | None) -> None:
        if node is None:
            return
        for key_node, items in self.mapping(node, "custom_tags", ()).items():
            account = str(key_node)
            self.check_account(account, items, f"custom_tags.{account}")
            for i, item in enumerate(self.sequence(items, f"custom_tags.{account}")):
                self.read_custom_tag(account, item, f"custom_tags.{account}[{i}]")

    def read_custom_tag(self, account: str, node: yaml.Node, path: str) -> None:
        spec = self.mapping(node, path, ("key", "from"))
        key = self.text(spec.get("key"), f"{path}.key", node)
        if "from" not in spec:
            self.fail(node, f"{path}.from", "required key is missing",
                      "one of value, header, field or procedure")
            return
        source = self.mapping(spec["from"], f"{path}.from",
                              ("value", "header", "field", "procedure"))
        if len(source) != 1:
            self.fail(spec["from"], f"{path}.from",
                      "give exactly one of value, header, field or procedure")
            return
        [(kind, value_node)] = source.items()
        argument = str(self.scalar(value_node, f"{path}.from.{kind}"))
        if kind == "procedure":
            self.check_procedure(argument, value_node, f"{path}.from.procedure")
        if key:
            self.tags.append(CustomTagDef(account, key, kind, argument))

    # --- rules -----------------------------------------------------------------------------

    def read_rule(self, node: yaml.Node, path: str) -> None:
        raw = self.mapping(node, path, ())
        rule_type = self.scalar(raw.get("type"), f"{path}.type") if "type" in raw else None
        if rule_type is None:
            self.fail(node, f"{path}.type", "required key is missing", _hint("", RULE_TYPES))
            return
        if rule_type not in RULE_TYPES:
            self.fail(raw["type"], f"{path}.type", f"unknown rule type {rule_type!r}",
                      _hint(str(rule_type), RULE_TYPES))
            return
        allowed = COMMON_KEYS + TYPE_KEYS[rule_type]
        for key_node, _ in node.value:
            if str(key_node.value) not in allowed:
                self.fail(key_node, _join(path, key_node.value),
                          f"unknown key for a {rule_type} rule", _hint(key_node.value, allowed))
        name = self.text(raw.get("name"), f"{path}.name", node)
        if name in self.names:
            self.fail(raw["name"], f"{path}.name", f"duplicate rule name {name!r}")
        self.names.add(name or "")
        enabled = self.scalar(raw["enabled"], f"{path}.enabled") if "enabled" in raw else True
        if not isinstance(enabled, bool):
            self.fail(raw["enabled"], f"{path}.enabled", "expected true or false")
        accounts = self.read_accounts(raw.get("accounts"), f"{path}.accounts")
        priority = self.integer(raw["priority"], f"{path}.priority") if "priority" in raw else 100
        when = self.condition(raw["when"], f"{path}.when") if "when" in raw else None
        params = self.read_params(rule_type, raw, node, path)
        if name and enabled is not False:  # a disabled rule is checked, but not used
            self.rules.append(Rule(name, rule_type, accounts, priority, len(self.rules), when,
                                   params, self.where(node)))

    def read_accounts(self, node: yaml.Node | None, path: str) -> tuple[str, ...] | None:
        if node is None:
            return None
        names = [str(self.scalar(n, path)) for n in self.sequence(node, path)]
        for name, item in zip(names, node.value, strict=False):
            self.check_account(name, item, path)
        return tuple(names)

    def check_account(self, name: str, node: yaml.Node, path: str) -> None:
        if self.accounts is not None and name not in self.accounts:
            self.fail(node, path, f"unknown account {name!r}", _hint(name, sorted(self.accounts)))

    def check_procedure(self, ref: str, node: yaml.Node, path: str) -> None:
        module, _, func = ref.partition(":")
        if not module or not func or not all(p.isidentifier() for p in module.split(".")) \
                or not func.isidentifier():
            self.fail(node, path, f"expected module:function, got {ref!r}")

    def read_params(self, rule_type: str, raw: dict[str, Any], node: yaml.Node,
                    path: str) -> dict[str, Any]:
        reader = getattr(self, "params_" + rule_type.replace("-", "_"), None)
        return reader(raw, node, path) if reader else {}

    # --- conditions ------------------------------------------------------------------------

    def condition(self, node: yaml.Node, path: str) -> Node | None:
        if isinstance(node, yaml.SequenceNode):  # a bare list means "all of these"
            items = [self.condition(n, f"{path}[{i}]") for i, n in enumerate(node.value)]
            return Combinator("all", tuple(i for i in items if i is not None))
        if not isinstance(node, yaml.MappingNode) or len(node.value) != 1:
            self.fail(node, path, "a condition is one 'key: {operator: value}' or all/any/not")
            return None
        [(key_node, value)] = node.value
        key = str(key_node.value)
        if key in ("all", "any"):
            if not isinstance(value, yaml.SequenceNode):
                self.fail(value, _join(path, key), f"{key} takes a list of conditions")
                return None
            items = [self.condition(n, f"{path}.{key}[{i}]") for i, n in enumerate(value.value)]
            return Combinator(key, tuple(i for i in items if i is not None))
        if key == "not":
            inner = self.condition(value, f"{path}.not")
            return Combinator("not", (inner,)) if inner is not None else None
        return self.leaf(key_node, key, value, _join(path, key))

    def leaf(self, key_node: yaml.Node, key: str, value: yaml.Node, path: str) -> Node | None:
        spec = key_for(key)
        if spec is None:
            self.fail(key_node, path, f"unknown condition key {key!r}",
                      _hint(key, all_key_names() + ["all", "any", "not"]))
            return None
        if isinstance(value, yaml.ScalarNode):  # shorthand: `subject: Hello` means equals
            ops = {"equals": value}
        elif isinstance(value, yaml.MappingNode):
            ops = {}
            for op_node, operand in value.value:
                name = str(op_node.value)
                if name in OPERATORS or name == "case":
                    ops[name] = operand
                else:
                    self.fail(op_node, _join(path, name), f"unknown operator {name!r}",
                              _hint(name, (*OPERATORS, "case")))
                    return None
        else:
            self.fail(value, path, "expected {operator: value} or a single value")
            return None
        case = ops.pop("case", None)
        sensitive = case is not None and self.scalar(case, f"{path}.case") == "sensitive"
        if case is not None and self.scalar(case, f"{path}.case") not in ("sensitive",
                                                                          "insensitive"):
            self.fail(case, f"{path}.case", "expected sensitive or insensitive")
        if len(ops) != 1:
            self.fail(value, path, "give exactly one operator",
                      f"operators: {', '.join(OPERATORS)}")
            return None
        [(op, operand_node)] = ops.items()
        return self.operand(key, spec.kind, op, operand_node, sensitive, path)

    def operand(self, key: str, kind: str, op: str, node: yaml.Node, sensitive: bool,
                path: str) -> Node | None:
        operator = OPERATORS[op]
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            self.fail(node, f"{path}.{op}", f"{op} needs a value")
            return None
        if kind not in operator.kinds:
            self.fail(node, f"{path}.{op}", f"{op} does not apply to {key} ({kind})")
            return None
        raw = yaml.safe_load(yaml.serialize(node)) if not isinstance(node, yaml.ScalarNode) \
            else self.scalar(node, f"{path}.{op}")
        if raw is _INVALID:
            return None
        if op == "matches":
            compiled = self.regex(node, f"{path}.{op}", sensitive)
            if compiled is None:
                return None
            return Condition(key, op, compiled, sensitive, str(raw), self.where(node))
        element_kind = "text" if kind == "list" else kind
        raw = _yaml_1_1_fixups(element_kind, raw)
        stamps = [v for v in (raw if isinstance(raw, list) else [raw])
                  if isinstance(v, datetime.datetime)]
        if element_kind == "date" and stamps:  # would silently never equal a date
            self.fail(node, f"{path}.{op}", "expected a date (YYYY-MM-DD), got a date and "
                      f"time {stamps[0].isoformat()}")
            return None
        try:
            value = coerce_operand(element_kind, op, raw)
        except ValueError as exc:
            self.fail(node, f"{path}.{op}", str(exc))
            return None
        prepared = operator.prepare(value, sensitive)
        return Condition(key, op, prepared, sensitive, repr(raw), self.where(node))

    def regex(self, node: yaml.Node, path: str, sensitive: bool) -> Any:
        pattern = self.scalar(node, path)
        try:
            return OPERATORS["matches"].prepare(str(pattern), sensitive)  # as rules match
        except regex.error as exc:
            self.fail(node, path, f"invalid regular expression: {exc}")
            return None


def _yaml_1_1_fixups(kind: str, raw: Any) -> Any:
    """Undo a YAML 1.1 surprise: unquoted ``20:00`` is the base-60 number 1200."""
    if isinstance(raw, list):
        return [_yaml_1_1_fixups(kind, item) for item in raw]
    if kind == "time" and isinstance(raw, int) and not isinstance(raw, bool):
        return f"{raw // 60:02d}:{raw % 60:02d}"
    return raw


class _Invalid:
    """A value YAML could not construct; already reported."""


_INVALID = _Invalid()


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)
