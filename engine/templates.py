"""Templates: reply, acknowledgement and auto-reply bodies rendered with merge fields.

Used by the outbox (auto-acks, auto-replies) and the console (an agent's reply from a
template). Sources come from a templates directory or from a loader callable (the database);
both are Jinja2 compiled in an ``ImmutableSandboxedEnvironment``: templates cannot reach
Python internals, files or the environment, and they see only the merge context.

A template named ``*.html``/``*.htm`` is HTML: merge values are autoescaped and the result
carries a text alternative (inscriptis). Any other name is text, never escaped.

Fields: the standard codes of ``engine.mergefields`` plus custom fields an agent types in.
A custom field is required (``{{ NAME }}``) or optional (``{{ NAME|default('') }}``); the
seed's ``((*NAME*))`` and ``((?NAME?))`` markers import to exactly those forms, so a stored
template says by itself which fields it needs. An unknown or missing field is an error that
names it, never a blank in a customer's mail.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from inscriptis import get_text
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.mergefields import (
    FIELD_NAME,
    STANDARD_FIELDS,
    InvalidTemplate,
    MissingField,
    SandboxViolation,
    TemplateError,
    UnknownField,
    is_reserved,
)

__all__ = [
    "InvalidTemplate", "MissingField", "Rendered", "SandboxViolation", "TemplateError",
    "TemplateFields", "Templates", "UnknownField", "import_document", "render_string",
    "string_fields",
]

HTML_SUFFIXES = ("html", "htm")
MAX_REPEAT = 100_000  # longest string/list a template may build with * (a mail, not a DoS)
Source = Callable[[str], str | None]

_MARKER = re.compile(r"\(\(([*?])\s*([^()*?]*?)\s*\1\)\)")  # ((*NAME*)) / ((?NAME?))
_JINJA_OPENERS = re.compile(r"\{[{%#]")
_JINJA_WORDS = {"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is",
                "if", "else", "for", "loop", "self", "super", "varargs", "kwargs"}
_UNDEFINED = re.compile(r"^'([^']+)' is undefined$")


@dataclass(frozen=True)
class TemplateFields:
    """The fields a template uses, for a UI to prompt for: see ``Templates.fields``."""

    standard: frozenset[str]
    required: frozenset[str]  # custom, no default: the agent must fill these
    optional: frozenset[str]  # custom with |default: empty unless filled
    provided: frozenset[str] = frozenset()  # filled by other sources (SQL merge fields)
    unknown: frozenset[str] = frozenset()  # standard prefix but no such field (typos)


@dataclass(frozen=True)
class Rendered:
    text: str
    html: str | None = None


# --- the sandbox ----------------------------------------------------------------------------------


class _Sandbox(ImmutableSandboxedEnvironment):
    """No globals (no ``cycler``, ``range``, ``namespace``...), bounded ``*`` and ``**``."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > 100:
            raise SandboxViolation(f"exponent {right} is too large")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if (isinstance(seq, str | list | tuple) and isinstance(count, int)
                        and len(seq) * count > MAX_REPEAT):
                    raise SandboxViolation(f"repetition would build {len(seq) * count} items")
        return super().call_binop(context, operator, left, right)


def _environment(loader: jinja2.BaseLoader | None, autoescape: Any) -> _Sandbox:
    env = _Sandbox(loader=loader, autoescape=autoescape, undefined=jinja2.StrictUndefined,
                   keep_trailing_newline=True, auto_reload=True)
    env.globals.clear()
    return env


def _function_loader(source: Source) -> jinja2.BaseLoader:
    def load(name: str) -> tuple[str, None, Callable[[], bool]] | None:
        text = source(name)
        if text is None:
            return None
        return text, None, lambda: source(name) == text  # recompiled when the row changes

    return jinja2.FunctionLoader(load)


_STRING_ENVS = {False: _environment(None, False), True: _environment(None, True)}


# --- fields ---------------------------------------------------------------------------------------


def _guarded(tree: nodes.Template) -> set[str]:
    """Names used under ``|default`` / ``|d`` or tested with ``is defined``: optional ones."""
    names = set()
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        optional = (node.name in ("default", "d") if isinstance(node, nodes.Filter)
                    else node.name in ("defined", "undefined"))
        if optional and isinstance(node.node, nodes.Name):
            names.add(node.node.name)
    return names


def _classify(used: set[str], guarded: set[str], provided: frozenset[str]) -> TemplateFields:
    standard = used & STANDARD_FIELDS.keys()
    custom = used - standard - provided
    unknown = {name for name in custom if is_reserved(name)}
    custom -= unknown
    return TemplateFields(frozenset(standard), frozenset(custom - guarded),
                          frozenset(custom & guarded), frozenset(used & provided),
                          frozenset(unknown))


def _parse(env: jinja2.Environment, source: str, name: str) -> nodes.Template:
    try:
        return env.parse(source, name=name)
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidTemplate(name, exc.message or "syntax error", exc.lineno) from None


def string_fields(source: str, provided: frozenset[str] = frozenset()) -> TemplateFields:
    """The fields of a template given as a string (no includes followed)."""
    tree = _parse(_STRING_ENVS[False], source, "<string>")
    return _classify(meta.find_undeclared_variables(tree), _guarded(tree), provided)


def _check(fields: TemplateFields, context: Mapping[str, Any]) -> None:
    if fields.unknown:
        hints = [f"{n}: did you mean {_closest(n)}?" for n in sorted(fields.unknown) if _closest(n)]
        raise UnknownField(fields.unknown, "; ".join(hints))
    missing = {name for name in fields.required | fields.provided if name not in context}
    if missing:
        raise MissingField(missing)


def _closest(name: str) -> str | None:
    import difflib

    matches = difflib.get_close_matches(name.upper(), list(STANDARD_FIELDS), n=1, cutoff=0.75)
    return matches[0] if matches else None


# --- rendering ------------------------------------------------------------------------------------


class Templates:
    """Named templates from a directory or a ``name -> source | None`` callable (the database).

    Compiled templates are cached; a changed file or database row is recompiled on next use.
    """

    def __init__(self, source: Path | str | Source):
        loader = (_function_loader(source) if callable(source)
                  else jinja2.FileSystemLoader(str(source)))
        autoescape = jinja2.select_autoescape(HTML_SUFFIXES, default_for_string=False)
        self.env = _environment(loader, autoescape)
        self._fields: dict[tuple[str, frozenset[str]],
                           tuple[tuple[tuple[str, str], ...], TemplateFields]] = {}

    def fields(self, name: str, provided: frozenset[str] = frozenset()) -> TemplateFields:
        """Fields of ``name`` and the templates it includes, imports or extends (parsed again
        only when one of those sources changed)."""
        known = self._fields.get((name, provided))
        if known is not None and all(self._source(n) == text for n, text in known[0]):
            return known[1]
        used: set[str] = set()
        guarded: set[str] = set()
        todo, seen = [name], {}
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen[current] = self._source(current)
            tree = _parse(self.env, seen[current], current)
            used |= meta.find_undeclared_variables(tree)
            guarded |= _guarded(tree)
            todo += [ref for ref in meta.find_referenced_templates(tree) if ref is not None]
        result = _classify(used, guarded, provided)
        self._fields[name, provided] = (tuple(seen.items()), result)
        return result

    def render(self, name: str, context: Mapping[str, Any],
               custom: Mapping[str, Any] | None = None,
               provided: frozenset[str] = frozenset()) -> Rendered:
        """Render ``name`` with the merge ``context`` plus the agent's ``custom`` values.

        Raises ``UnknownField``, ``MissingField`` (naming the fields), ``InvalidTemplate``
        or ``SandboxViolation``; never renders a blank for a field it does not know.
        """
        values = _values(context, custom)
        _check(self.fields(name, provided), values)
        try:
            template = self.env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise InvalidTemplate(name, exc.message or "syntax error", exc.lineno) from None
        return _finish(_run(template, values), is_html(name))

    def _source(self, name: str) -> str:
        try:
            source, _, _ = self.env.loader.get_source(self.env, name)  # type: ignore[union-attr]
        except jinja2.TemplateNotFound:
            raise InvalidTemplate(name, "no such template") from None
        return source


def is_html(name: str) -> bool:
    return name.lower().rpartition(".")[2] in HTML_SUFFIXES


def render_string(source: str, context: Mapping[str, Any],
                  custom: Mapping[str, Any] | None = None, *, html: bool = False,
                  provided: frozenset[str] = frozenset()) -> Rendered:
    """Render a template given as a string (a subject line, a preview in the editor)."""
    values = _values(context, custom)
    _check(string_fields(source, provided), values)
    return _finish(_run(_STRING_ENVS[html].from_string(source), values), html)


def _values(context: Mapping[str, Any], custom: Mapping[str, Any] | None) -> dict[str, Any]:
    clash = sorted(set(custom or ()) & STANDARD_FIELDS.keys())
    if clash:
        raise UnknownField(clash, "standard fields cannot be overridden by custom values")
    return {**context, **(custom or {})}


def _run(template: jinja2.Template, values: Mapping[str, Any]) -> str:
    try:
        return template.render(values)
    except SecurityError as exc:
        raise SandboxViolation(str(exc)) from None
    except jinja2.UndefinedError as exc:
        match = _UNDEFINED.match(str(exc))
        raise UnknownField([match.group(1)] if match else [str(exc)]) from None
    except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
        raise TemplateError(f"template failed: {exc}") from None


def _finish(output: str, html: bool) -> Rendered:
    return Rendered(get_text(output).strip() + "\n", output) if html else Rendered(output)


# --- importing seed documents ---------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedTemplate:
    source: str  # Jinja, ready to store
    required: frozenset[str]  # custom fields marked ((*NAME*)) (standard codes not listed)
    optional: frozenset[str]  # custom fields marked only ((?NAME?))


def import_document(text: str, name: str = "<document>") -> ImportedTemplate:
    """Convert a seed document's ``((*NAME*))``/``((?NAME?))`` markers to Jinja.

    Anything else in the document is literal: Jinja syntax already in it (``{{``, ``{%``,
    ``{#``) is escaped, so an imported document cannot run template code.
    """
    markers = list(_MARKER.finditer(text))
    for match in markers:
        field = match.group(2)
        if not FIELD_NAME.match(field) or field in _JINJA_WORDS or keyword.iskeyword(field):
            line = text.count("\n", 0, match.start()) + 1
            raise InvalidTemplate(name, f"{match.group(0)!r} is not a usable field name", line)
    required = {m.group(2) for m in markers if m.group(1) == "*"}
    optional = {m.group(2) for m in markers} - required  # marked required anywhere: required
    out, last = [], 0
    for match in markers:
        field = match.group(2)
        out.append(_literal(text[last:match.start()]))
        out.append(f"{{{{ {field} }}}}" if field in required else f"{{{{ {field}|default('') }}}}")
        last = match.end()
    out.append(_literal(text[last:]))
    return ImportedTemplate("".join(out), frozenset(required - STANDARD_FIELDS.keys()),
                            frozenset(optional - STANDARD_FIELDS.keys()))


def _literal(text: str) -> str:
    return _JINJA_OPENERS.sub(lambda m: "{{ '" + m.group(0) + "' }}", text)
