"""``postdesk template import|list``: templates stored in the database."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select, update

from engine.mergefields import TemplateError
from engine.store import database
from engine.store.models import TemplateSource
from engine.templates import Templates, import_document, is_html


def _engine(ctx: click.Context) -> Any:
    from gateway.cli import settings_from

    return database.make_engine(settings_from(ctx.find_root()).database_url)


@click.group("template")
def template() -> None:
    """Templates for acknowledgements, auto-replies and agents' replies."""


@template.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", help="Stored name with suffix (.txt or .html; default: the file's).")
@click.option("--seed", is_flag=True, help="A seed document: ((*NAME*)) marks a required "
              "field, ((?NAME?)) an optional one; everything else is literal text.")
@click.pass_context
def import_cmd(ctx: click.Context, file: str, name: str | None, seed: bool) -> None:
    """Store FILE as a template (replacing one of the same name); print its fields."""
    name = name or Path(file).name
    text = Path(file).read_text(encoding="utf-8")
    try:
        source = import_document(text, name).source if seed else text
        fields = Templates(lambda n: source if n == name else None).fields(name)
    except TemplateError as exc:
        raise click.ClickException(str(exc)) from None
    if fields.unknown:
        raise click.ClickException(f"{name}: unknown merge field(s): "
                                   f"{', '.join(sorted(fields.unknown))}")
    now = datetime.now(UTC)
    with database.writer(_engine(ctx)).begin() as conn:
        values = {"source": source, "updated_at": now}
        if not conn.execute(update(TemplateSource).where(TemplateSource.name == name)
                            .values(**values)).rowcount:
            conn.execute(TemplateSource.__table__.insert().values(name=name, **values))
    kind = "HTML" if is_html(name) else "text"
    click.echo(f"postdesk: stored {kind} template {name}")
    for label, names in (("standard", fields.standard), ("required", fields.required),
                         ("optional", fields.optional)):
        if names:
            click.echo(f"  {label}: {', '.join(sorted(names))}")


@template.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """Templates stored in the database (files in the templates directory also count)."""
    table = TemplateSource.__table__
    with _engine(ctx).connect() as conn:
        rows = [{"name": r.name, "updated_at": r.updated_at.isoformat(),
                 "characters": len(r.source)}
                for r in conn.execute(select(table).order_by(table.c.name))]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            click.echo(f"{r['name']:<40} {r['updated_at']}  {r['characters']} chars")
