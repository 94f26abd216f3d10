"""Templates and merge fields: every standard field, custom fields, SQL fields, the sandbox."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from databases import PostgresServer
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from engine.config import AccountSettings
from engine.mergefields import (
    STANDARD_FIELDS,
    AckInfo,
    AgentInfo,
    InboundFields,
    merge_context,
)
from engine.mime import parse_message
from engine.sqlfields import (
    NoRows,
    QueryTimeout,
    SqlFieldError,
    SqlMergeField,
    UnsafeQuery,
    check_query,
    read_only,
    run_sql_field,
    sql_engine,
)
from engine.store.database import make_engine
from engine.templates import (
    InvalidTemplate,
    MissingField,
    SandboxViolation,
    TemplateError,
    Templates,
    UnknownField,
    import_document,
    render_string,
    string_fields,
)

NOW = datetime(2025, 3, 14, 23, 30, tzinfo=UTC)  # already the 15th in Tokyo
RECEIVED = datetime(2025, 3, 14, 9, 5, tzinfo=UTC)
ACCOUNT = AccountSettings(name="support", addresses=["support@example.com"],
                          from_name="Example Support", reply_to="help@example.com",
                          signature="--\nExample Support")
INBOUND = InboundFields(subject="Order 42 is late", from_addr="ann@customer.test",
                        from_name="Ann Lee", to=("support@example.com",),
                        cc=("boss@customer.test", "ops@customer.test"), received_at=RECEIVED,
                        message_id="<m42@customer.test>", text="Where is it?\n\nAnn\n")
AGENT = AgentInfo(first_name="Bo", last_name="Nilsson", email="bo@example.com",
                  user_name="bo", title="Support engineer")
ACK = AckInfo(reference="R-1001", tag="[#AB12CD]")
CUSTOMER = {"party_id": "7", "party_name": "Customer Ltd", "CP_PARTY_NUMBER": "C-0007",
            "party_type": "ORGANIZATION", "email": "info@customer.test", "phone": "+1 555 0100",
            "address": "1 Main St", "city": "Springfield", "postal_code": "12345",
            "country": "US"}
CONTACT = {"party_id": "9", "title": "Ms", "first_name": "Ann", "last_name": "Lee",
           "full_name": "Ann Lee", "email": "ann@customer.test", "phone": "+1 555 0101"}

EXPECTED = {
    "CP_PARTY_ID": "7", "CP_PARTY_NAME": "Customer Ltd", "CP_PARTY_NUMBER": "C-0007",
    "CP_PARTY_TYPE": "ORGANIZATION", "CP_EMAIL": "info@customer.test",
    "CP_PHONE": "+1 555 0100", "CP_ADDRESS": "1 Main St", "CP_CITY": "Springfield",
    "CP_POSTAL_CODE": "12345", "CP_COUNTRY": "US",
    "CON_PARTY_ID": "9", "CON_TITLE": "Ms", "CON_FIRST_NAME": "Ann", "CON_LAST_NAME": "Lee",
    "CON_FULL_NAME": "Ann Lee", "CON_EMAIL": "ann@customer.test", "CON_PHONE": "+1 555 0101",
    "AD_FIRST_NAME": "Bo", "AD_LAST_NAME": "Nilsson", "AD_FULL_NAME": "Bo Nilsson",
    "AD_USER_NAME": "bo", "AD_EMAIL": "bo@example.com", "AD_TITLE": "Support engineer",
    "MD_CURR_DATE": "2025-03-15", "MD_CURR_TIME": "08:30",
    "ACCT_NAME": "support", "ACCT_EMAIL": "support@example.com",
    "ACCT_FROM_NAME": "Example Support", "ACCT_REPLY_TO": "help@example.com",
    "ACCT_SIGNATURE": "--\nExample Support",
    "INB_SUBJECT": "Order 42 is late", "INB_FROM": "ann@customer.test",
    "INB_FROM_NAME": "Ann Lee", "INB_TO": "support@example.com",
    "INB_CC": "boss@customer.test, ops@customer.test", "INB_RECEIVED_DATE": "2025-03-14",
    "INB_RECEIVED_TIME": "18:05", "INB_MESSAGE_ID": "<m42@customer.test>",
    "INB_BODY": "> Where is it?\n>\n> Ann",
    "ACK_SUBJECT": "Order 42 is late", "ACK_RECEIVED_DATE": "2025-03-14",
    "ACK_RECEIVED_TIME": "18:05", "ACK_REFERENCE": "R-1001", "ACK_TAG": "[#AB12CD]",
}


def full_context() -> dict[str, str]:
    return merge_context(account=ACCOUNT, inbound=INBOUND, agent=AGENT, customer=CUSTOMER,
                         contact=CONTACT, ack=ACK, now=NOW, tz=ZoneInfo("Asia/Tokyo"))


# --- standard fields ------------------------------------------------------------------------------


def test_expected_table_covers_every_standard_field() -> None:
    assert set(EXPECTED) == set(STANDARD_FIELDS)
    prefixes = {code.split("_")[0] for code in STANDARD_FIELDS}
    assert prefixes == {"CP", "CON", "AD", "MD", "ACCT", "INB", "ACK"}


@pytest.mark.parametrize("code", sorted(STANDARD_FIELDS))
def test_every_standard_field_renders(code: str) -> None:
    assert render_string(f"{{{{ {code} }}}}", full_context()).text == EXPECTED[code]


def test_customer_and_contact_fields_render_defaults_until_customers_exist() -> None:
    context = merge_context(inbound=INBOUND, now=NOW)
    assert render_string("Dear {{ CON_FIRST_NAME }} of {{ CP_PARTY_NAME }}", context).text == \
        "Dear Customer of Customer"
    assert context["CP_PARTY_NUMBER"] == context["AD_FULL_NAME"] == ""
    configured = merge_context(defaults={"CP_PARTY_NAME": "Valued customer"}, now=NOW)
    assert configured["CP_PARTY_NAME"] == "Valued customer"
    with pytest.raises(ValueError, match="CP_PARTY_NAM"):
        merge_context(defaults={"CP_PARTY_NAM": "typo"})
    with pytest.raises(ValueError, match="shoe_size"):
        merge_context(customer={"shoe_size": "44"})


def test_context_from_a_parsed_message() -> None:
    raw = (b"From: =?utf-8?q?Jos=C3=A9?= <Jose@Customer.test>\r\nTo: support@example.com\r\n"
           b"Subject: Refund please\r\nMessage-ID: <r1@customer.test>\r\n"
           b"Date: Fri, 14 Mar 2025 09:00:00 +0000\r\n\r\nI want my money back.\r\n")
    parsed = parse_message(raw, RECEIVED)
    context = merge_context(inbound=InboundFields.from_parsed(parsed, RECEIVED), now=NOW)
    assert (context["INB_FROM"], context["INB_FROM_NAME"]) == ("jose@customer.test", "José")
    assert context["INB_SUBJECT"] == context["ACK_SUBJECT"] == "Refund please"
    assert context["INB_MESSAGE_ID"].strip("<>") == "r1@customer.test"
    assert context["INB_BODY"] == "> I want my money back."
    assert context["INB_RECEIVED_TIME"] == "09:05"


# --- custom fields --------------------------------------------------------------------------------


def test_missing_required_custom_fields_are_an_error_naming_them() -> None:
    source = "Your refund of {{ AMOUNT }} for {{ ORDER_NO }} is on its way."
    with pytest.raises(MissingField) as info:
        render_string(source, full_context(), {"AMOUNT": "$10"})
    assert info.value.names == ("ORDER_NO",)
    assert "ORDER_NO" in str(info.value)
    assert render_string(source, full_context(), {"AMOUNT": "$10", "ORDER_NO": "42"}).text == \
        "Your refund of $10 for 42 is on its way."


def test_optional_custom_field_renders_empty() -> None:
    source = "Thanks.{{ NOTE|default('') }}{% if PS is defined %} PS: {{ PS }}{% endif %}"
    assert string_fields(source).optional == {"NOTE", "PS"}
    assert render_string(source, full_context()).text == "Thanks."
    assert render_string(source, full_context(), {"PS": "hi"}).text == "Thanks. PS: hi"


def test_unknown_standard_looking_field_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(UnknownField, match="INB_SUBJCT.*did you mean INB_SUBJECT"):
        render_string("Re: {{ INB_SUBJCT }}", full_context())
    with pytest.raises(UnknownField, match="INB_SUBJECT"):
        render_string("x", full_context(), {"INB_SUBJECT": "overridden"})


def test_seed_markers_import_to_jinja_and_record_required_and_optional() -> None:
    document = ("Dear ((*CON_FIRST_NAME*)),\nyour case ((* CASE_NO *)) is closed."
                "((?CLOSING_NOTE?)) {{ not_code }} {% raw %} ((?CASE_NO?))")
    imported = import_document(document)
    assert imported.required == {"CASE_NO"}  # marked required once: required
    assert imported.optional == {"CLOSING_NOTE"}
    fields = string_fields(imported.source)
    assert (fields.standard, fields.required, fields.optional) == (
        {"CON_FIRST_NAME"}, {"CASE_NO"}, {"CLOSING_NOTE"})
    rendered = render_string(imported.source, full_context(), {"CASE_NO": "C-9"}).text
    assert rendered == "Dear Ann,\nyour case C-9 is closed. {{ not_code }} {% raw %} C-9"
    with pytest.raises(MissingField, match="CASE_NO"):
        render_string(imported.source, full_context())


def test_import_refuses_a_marker_that_is_not_a_field_name() -> None:
    with pytest.raises(InvalidTemplate) as info:
        import_document("line one\n((*first name*))")
    assert info.value.line == 2


# --- files, database loader, HTML -----------------------------------------------------------------


@pytest.fixture
def template_dir(tmp_path: Path) -> Path:
    (tmp_path / "ack.txt").write_text(
        "Hello {{ CON_FIRST_NAME }},\nwe received \"{{ INB_SUBJECT }}\" {{ ACK_TAG }}.\n"
        "{% include 'signature.txt' %}")
    (tmp_path / "signature.txt").write_text("{{ AD_FULL_NAME }} {{ EXTRA|default('') }}\n")
    (tmp_path / "reply.html").write_text(
        "<p>Dear {{ CON_FIRST_NAME }},</p><p>About <b>{{ INB_SUBJECT }}</b>:</p>"
        "<ul><li>{{ STEP }}</li></ul>")
    return tmp_path


def test_text_template_from_a_directory_with_includes(template_dir: Path) -> None:
    templates = Templates(template_dir)
    fields = templates.fields("ack.txt")
    assert fields.standard == {"CON_FIRST_NAME", "INB_SUBJECT", "ACK_TAG", "AD_FULL_NAME"}
    assert fields.optional == {"EXTRA"} and not fields.required
    rendered = templates.render("ack.txt", full_context())
    assert rendered.html is None
    assert rendered.text == ('Hello Ann,\nwe received "Order 42 is late" [#AB12CD].\n'
                             "Bo Nilsson \n")


def test_html_autoescapes_merge_values_and_text_does_not(template_dir: Path) -> None:
    (template_dir / "subject.txt").write_text("Re: {{ INB_SUBJECT }}")
    context = full_context() | {"INB_SUBJECT": "<script>alert(1)</script> & co"}
    templates = Templates(template_dir)
    html = templates.render("reply.html", context, {"STEP": "Restart <b>"})
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html.html
    assert "<script>" not in html.html and "Restart &lt;b&gt;" in html.html
    assert "<b>" in html.html  # the template's own markup stays
    assert templates.render("subject.txt", context).text == \
        "Re: <script>alert(1)</script> & co"


def test_html_template_carries_a_text_alternative(template_dir: Path) -> None:
    rendered = Templates(template_dir).render("reply.html", full_context(), {"STEP": "Wait"})
    assert rendered.html.startswith("<p>Dear Ann,</p>")
    assert "<" not in rendered.text
    assert "Dear Ann," in rendered.text and "About Order 42 is late:" in rendered.text
    assert "* Wait" in rendered.text


def test_templates_from_a_loader_callable_recompile_when_the_source_changes() -> None:
    rows = {"greeting.txt": "Hi {{ CON_FIRST_NAME }}"}
    templates = Templates(rows.get)
    assert templates.render("greeting.txt", full_context()).text == "Hi Ann"
    rows["greeting.txt"] = "Hello {{ CON_FULL_NAME }}"
    assert templates.render("greeting.txt", full_context()).text == "Hello Ann Lee"
    with pytest.raises(InvalidTemplate, match="missing.txt"):
        templates.render("missing.txt", full_context())


def test_syntax_error_names_template_and_line() -> None:
    templates = Templates({"bad.txt": "ok\n{% if %}"}.get)
    with pytest.raises(InvalidTemplate) as info:
        templates.render("bad.txt", full_context())
    assert (info.value.name, info.value.line) == ("bad.txt", 2)


# --- the sandbox ----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ INB_SUBJECT.__class__ }}",
    "{{ INB_SUBJECT|attr('__class__') }}",
    "{{ INB_SUBJECT.format.__globals__ }}",
    "{{ '{0.__class__}'.format(INB_SUBJECT) }}",
    "{{ self.__init__.__globals__ }}",
    "{{ 'x' * 10000000 }}",
    "{{ 9 ** 999999 }}",
])
def test_sandbox_escapes_fail_with_sandbox_violation(source: str) -> None:
    with pytest.raises(SandboxViolation):
        render_string(source, full_context())


@pytest.mark.parametrize("source", [
    "{{ cycler.__init__.__globals__ }}",  # no globals at all
    "{{ lipsum.__globals__['os'] }}",
    "{{ range(10) }}",
    "{{ INB_SUBJECT._private }}",
    "{{ config }}",
    "{{ environ }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}",
])
def test_templates_cannot_reach_globals_files_or_environment(source: str) -> None:
    with pytest.raises(TemplateError):
        render_string(source, full_context())


def test_directory_templates_cannot_include_files_outside(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("SECRET")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "evil.txt").write_text("{% include '../secret.txt' %}")
    with pytest.raises(InvalidTemplate):
        Templates(tmp_path / "dir").render("evil.txt", full_context())


def test_sandbox_errors_are_template_errors() -> None:
    for error in (SandboxViolation, UnknownField, MissingField, InvalidTemplate, SqlFieldError):
        assert issubclass(error, TemplateError)


# --- SQL merge fields -----------------------------------------------------------------------------


@pytest.fixture
def crm(tmp_path: Path):
    """A customer database in SQLite (its authorizer and read-only opening are under test;
    PostgreSQL's guards have their own test below)."""
    path = tmp_path / "crm.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE customers (email TEXT, name TEXT, plan TEXT, renews TEXT)")
        db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", [
            ("ann@customer.test", "Ann Lee", "gold", "2025-12-01"),
            ("cy@other.test", "Cy", "free", None),
        ])
    engine = sql_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


def customer_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM customers")).scalar_one()


def test_sql_field_returns_aliases_as_fields_bound_from_the_context(crm) -> None:
    field = SqlMergeField("plan", """
        SELECT plan AS PLAN_NAME, renews AS "RENEWS_ON", '10:30 -- not a comment' AS NOTE
        FROM customers  -- :NOT_A_PARAM
        WHERE email = :INB_FROM AND name <> :CP_PARTY_NAME;""")
    assert field.params == ("INB_FROM", "CP_PARTY_NAME")
    context = full_context()
    values = run_sql_field(crm, field, context)
    assert values == {"PLAN_NAME": "gold", "RENEWS_ON": "2025-12-01",
                      "NOTE": "10:30 -- not a comment"}
    source = "Your {{ PLAN_NAME }} plan renews on {{ RENEWS_ON }}."
    provided = frozenset(values)
    assert string_fields(source, provided).provided == {"PLAN_NAME", "RENEWS_ON"}
    assert render_string(source, context, values, provided=provided).text == \
        "Your gold plan renews on 2025-12-01."
    with pytest.raises(MissingField, match="RENEWS_ON"):
        render_string(source, context, {"PLAN_NAME": "gold"}, provided=provided)


def test_sql_field_null_renders_empty_and_no_row_is_an_error(crm) -> None:
    field = SqlMergeField("renewal", "SELECT renews AS RENEWS_ON FROM customers WHERE email = :E")
    assert run_sql_field(crm, field, {"E": "cy@other.test"}) == {"RENEWS_ON": ""}
    with pytest.raises(NoRows, match="renewal.*no row.*RENEWS_ON"):
        run_sql_field(crm, field, {"E": "nobody@nowhere.test"})
    with pytest.raises(SqlFieldError, match=":E"):
        run_sql_field(crm, field, {})


def test_sql_field_columns_need_field_name_aliases(crm) -> None:
    with pytest.raises(SqlFieldError, match="needs an alias"):
        run_sql_field(crm, SqlMergeField("n", "SELECT count(*) FROM customers"), {})
    with pytest.raises(SqlFieldError, match="standard merge field"):
        run_sql_field(crm, SqlMergeField("n", "SELECT name AS INB_FROM FROM customers"), {})


@pytest.mark.parametrize("sql", [
    "INSERT INTO customers VALUES ('x', 'y', 'z', NULL)",
    "SELECT 1 AS X; DROP TABLE customers",
    "SELECT name AS X FROM customers WHERE email = ''; DROP TABLE customers; --'",
    "DELETE FROM customers",
    "UPDATE customers SET plan = 'gold'",
    "CREATE TABLE t (a)",
    "WITH gone AS (DELETE FROM customers RETURNING *) SELECT count(*) AS N FROM gone",
    "WITH x AS (SELECT 1) INSERT INTO customers SELECT * FROM x",
    "SELECT * INTO backup FROM customers",
    "PRAGMA query_only = OFF",
    "PRAGMA journal_mode = DELETE",
    "ATTACH DATABASE 'file:/tmp/x.db?mode=rwc' AS x",
    "SELECT 'unterminated",
    "SELECT 1 AS X /* unterminated",
    "SELECT E'\\'' AS X",
    "SELECT $$; DROP TABLE customers$$ AS X",
    "",
])
def test_writing_statements_are_refused_before_running(crm, sql: str) -> None:
    with pytest.raises(UnsafeQuery):
        check_query(sql)
    with pytest.raises(UnsafeQuery):
        run_sql_field(crm, SqlMergeField("evil", sql), full_context())
    assert customer_count(crm) == 2


def test_the_database_itself_refuses_writes(crm) -> None:
    """Even if a write got past ``check_query``, the connection could not perform it."""
    with read_only(crm) as conn:
        for statement in ("INSERT INTO customers VALUES ('x', 'y', 'z', NULL)",
                          "DELETE FROM customers", "PRAGMA query_only = OFF",
                          "ATTACH DATABASE 'other.db' AS other", "DROP TABLE customers"):
            with pytest.raises(DBAPIError, match="not authorized"):
                conn.exec_driver_sql(statement)
    with crm.connect() as conn:  # no authorizer here: the file is open read-only
        with pytest.raises(DBAPIError, match="readonly"):
            conn.exec_driver_sql("DELETE FROM customers")
        assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 1
    assert customer_count(crm) == 2


def test_slow_query_hits_the_time_limit(crm) -> None:
    field = SqlMergeField("slow", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
                                  "SELECT i + 1 FROM n) SELECT max(i) AS BIG FROM n", timeout=0.2)
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match="slow: stopped after"):
        run_sql_field(crm, field, {})
    assert time.monotonic() - started < 2
    fast = SqlMergeField("fast", "SELECT name AS NAME FROM customers WHERE email = :E")
    assert run_sql_field(crm, fast, {"E": "cy@other.test"}) == {"NAME": "Cy"}  # pool reusable


# --- SQL merge fields on PostgreSQL (a throwaway cluster of Debian's postgresql) ----------------


@pytest.fixture
def postgres(postgres_server: PostgresServer) -> Iterator[str]:
    """An empty database in the session's cluster (merge fields read any database, not the
    store: this is PostgreSQL's read-only transactions and statement timeout at work)."""
    url = postgres_server.create()
    yield url
    postgres_server.drop(url)


def test_sql_fields_on_postgresql_are_read_only_and_time_limited(postgres: str) -> None:
    writer = make_engine(postgres)
    with writer.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS customers")
        conn.exec_driver_sql("CREATE TABLE customers (email text, plan text)")
        conn.exec_driver_sql("INSERT INTO customers VALUES ('ann@customer.test', 'gold')")
    engine = sql_engine(postgres)
    try:
        field = SqlMergeField("plan", "SELECT plan AS PlanName, plan::text AS \"PLAN_Q\" "
                                      "FROM customers WHERE email = :INB_FROM")
        assert run_sql_field(engine, field, full_context()) == {"PlanName": "gold",
                                                                 "PLAN_Q": "gold"}
        with read_only(engine) as conn, pytest.raises(DBAPIError, match="read-only"):
            conn.exec_driver_sql("DELETE FROM customers")
        slow = SqlMergeField("slow", "SELECT pg_sleep(5)::text AS S", timeout=0.2)
        with pytest.raises(QueryTimeout):
            run_sql_field(engine, slow, {})
        with pytest.raises(UnsafeQuery):
            run_sql_field(engine, SqlMergeField("evil", "SELECT 1 AS X; DROP TABLE customers"),
                          {})
        with writer.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM customers").scalar() == 1
    finally:
        engine.dispose()
        writer.dispose()
