"""An analyst's ad-hoc SQL limited to what the caller may see, decided on the syntax tree.

`scope_sql(sql, database=..., scopes={table: predicate})` parses the text with sqlglot
(dialect "clickhouse"), refuses anything that is not one read-only query over the tables in
`scopes`, and returns SQL in which every read of such a table is replaced by

    (SELECT * FROM <database>.<table> FINAL WHERE (<predicate>)) AS <alias or table name>

FINAL because the tables are ReplacingMergeTree and the sink is at-least-once. Refusals are
`ScopeError` (a ValueError) whose message is one line starting with "refused: ".

How the output is made: splicing, not regeneration
--------------------------------------------------
sqlglot's generator rewrites much of what analysts write into forms ClickHouse 18.16 (the
old server) does not have (checked with sqlglot 30.30 only): `toStartOfHour(x)` and
`toMonday(x)` become `dateTrunc('HOUR', x)`, `INTERVAL 1 DAY` becomes `INTERVAL '1' DAY`,
`ANY LEFT JOIN` becomes `LEFT ANY JOIN`, `dateDiff('second', a, b)` becomes
`DATE_DIFF(SECOND, a, b)`, `LIMIT 5, 10` becomes `LIMIT 10 OFFSET 5`, `trimBoth` becomes
`TRIM`, `if(c, a, b)` becomes `CASE`, a comma join becomes `CROSS JOIN`. So the tree is used
to *decide* (what is read, what is refused) and the output is the analyst's own text, token
by token as sqlglot read it, with only the table references (and CTE names) replaced:

* the text between two tokens is kept if it is plain ASCII whitespace, and becomes one space
  otherwise: every comment is dropped, so a comment that sqlglot and a ClickHouse version
  read differently (nested `/* /* */ */`, 18.16 has no nesting) cannot hide anything;
  ClickHouse receives exactly the tokens sqlglot parsed;
* `$$heredoc$$` strings are refused (18.16 does not have them);
* the result is parsed again and every table it reads is checked to be a scoped subquery
  (or a renamed CTE, or an allowed table function); a mismatch is an error, not a query.

What is refused (message examples)
----------------------------------
* anything but one query: "refused: INSERT is not allowed: only one SELECT statement",
  "refused: only one SELECT statement (found 2)", "refused: INTO OUTFILE is not allowed: the
  service returns the rows";
* "refused: SETTINGS may not be changed", "refused: FORMAT is chosen by the service",
  "refused: SAMPLE is not supported ...", "refused: PREWHERE is not supported here ...";
* a table not in `scopes`, in any database, or a table of another database:
  "refused: system.tables: only events, event_subjects, hits may be read";
* table functions: "refused: table function url() is not allowed"; only `numbers()` and
  `zeros()` are allowed (they read no table; time limits are the service's settings);
* `x IN table` (ClickHouse reads the whole table, unfiltered): "refused: IN hits reads a whole
  table; write IN (SELECT col FROM hits)";
* functions that read other tables, dictionaries, files or server state (`DENIED_FUNCTIONS`,
  `DENIED_FUNCTION_PREFIXES`, matched case-insensitively on any `name(`): dict*,
  joinGet*, hasColumnInTable, file, the function forms of IN (in, notIn, globalIn, ...),
  sleep, sleepEachRow, model evaluation, filesystem*, getMacro, getServerSetting.
  Allowed: currentUser, currentDatabase, getSetting (the session's own settings), version.

CTEs: a bare name that a visible `WITH name AS (query)` defines is that CTE (a CTE's own body
and later siblings do not see it). CTEs are renamed to `intelbus_cte_<name>` and references
get `AS <name>`, so if ClickHouse resolved a name differently from this module, it would look
for a table that does not exist rather than read a real one. Anything else bare is a table;
`<database>.<table>` is always the real table.
"""
from __future__ import annotations

import re

from sqlglot import exp
from sqlglot.dialects.clickhouse import ClickHouse
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

CTE_PREFIX = "intelbus_cte_"
ALLOWED_TABLE_FUNCTIONS = frozenset({"numbers", "zeros"})
DENIED_FUNCTIONS = frozenset(name.lower() for name in (
    "hasColumnInTable", "file", "in", "notIn", "globalIn", "globalNotIn", "nullIn", "notNullIn", "globalNullIn",
    "globalNotNullIn", "inIgnoreSet", "notInIgnoreSet", "globalInIgnoreSet", "globalNotInIgnoreSet",
    "sleep", "sleepEachRow", "evalMLMethod", "modelEvaluate", "catboostEvaluate", "naiveBayesClassifier",
    "getMacro", "getServerSetting", "getMergeTreeSetting", "filesystemAvailable", "filesystemCapacity",
    "filesystemUnreserved", "filesystemFree"))
DENIED_FUNCTION_PREFIXES = ("dict", "joinget")  # dictGet*, dictHas, dictIsIn, ...; joinGet, joinGetOrNull
_FROM_SOURCES = (exp.Table, exp.Subquery, exp.Final, exp.Values)
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIALECT = ClickHouse()


class ScopeError(ValueError):
    """An ad-hoc query that is refused; str() is one line saying what and why."""


def quote_name(name: str) -> str:
    if _PLAIN_NAME.fullmatch(name):
        return name
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def scope_sql(sql: str, *, database: str, scopes: dict[str, str]) -> str:
    """`sql` with every read of a table in `scopes` limited by its predicate; ScopeError if refused."""
    if not scopes:
        raise ScopeError("refused: this caller may read no table")
    predicates = {table: _check_predicate(table, pred) for table, pred in scopes.items()}
    tokens = _tokenize(sql)
    tree = _parse_one(tokens, sql)
    _check_statement(tree, tokens)
    edits = _plan(tree, tokens, database, scopes)
    _check_functions(tokens)
    out = _splice(sql, tokens, edits)
    _verify(out, database, predicates)
    return out


# --- reading -------------------------------------------------------------------------------

def _tokenize(sql: str):
    try:
        tokens = _DIALECT.tokenize(sql)
    except TokenError as e:
        raise ScopeError(f"refused: could not read the query ({str(e).splitlines()[0]})") from None
    for i, tok in enumerate(tokens):
        if tok.token_type == TokenType.HEREDOC_STRING:
            raise ScopeError("refused: $$ strings are not supported; write '...'")
        if tok.token_type == TokenType.INTO:
            nxt = tokens[i + 1].text.upper() if i + 1 < len(tokens) else ""
            if nxt == "OUTFILE":
                raise ScopeError("refused: INTO OUTFILE is not allowed: the service returns the rows")
    return tokens


def _parse_one(tokens, sql: str) -> exp.Expression:
    try:
        trees = [t for t in _DIALECT.parser().parse(tokens, sql) if t is not None]
    except ParseError as e:
        first = tokens[0].text.upper() if tokens else ""
        if first and first not in ("SELECT", "WITH", "("):
            raise ScopeError(f"refused: {first} is not allowed: only one SELECT statement") from None
        err = e.errors[0] if e.errors else {}
        where = f" at line {err.get('line')}, column {err.get('col')}" if err else ""
        raise ScopeError(f"refused: could not parse the query{where} near {err.get('highlight', '')!r}") from None
    if not trees:
        raise ScopeError("refused: the query is empty")
    if len(trees) > 1:
        raise ScopeError(f"refused: only one SELECT statement (found {len(trees)})")
    return trees[0]


def _check_statement(tree: exp.Expression, tokens) -> None:
    if not isinstance(tree, exp.Query):
        first = tokens[0].text.upper() if tokens else type(tree).__name__.upper()
        raise ScopeError(f"refused: {first} is not allowed: only one SELECT statement")
    for tok in tokens:
        if tok.token_type == TokenType.SETTINGS:
            raise ScopeError("refused: SETTINGS may not be changed")
    for node in tree.walk():
        if node.args.get("settings"):
            raise ScopeError("refused: SETTINGS may not be changed")
        if node.args.get("format"):
            raise ScopeError("refused: FORMAT is chosen by the service")
        if node.args.get("prewhere"):
            raise ScopeError("refused: PREWHERE is not supported here (tables are read through a subquery); write WHERE")
        if node.args.get("sample"):
            raise ScopeError("refused: SAMPLE is not supported (the tables have no sampling key)")
        if isinstance(node, exp.Into):
            raise ScopeError("refused: INTO is not allowed: only one SELECT statement")


def _check_predicate(table: str, pred: str) -> str:
    try:
        nodes = [n for n in _DIALECT.parse(pred) if n is not None]
    except (ParseError, TokenError) as e:
        raise ValueError(f"scope predicate for {table} does not parse: {e}") from None
    if len(nodes) != 1 or isinstance(nodes[0], exp.Query):
        raise ValueError(f"scope predicate for {table} is not one expression: {pred!r}")
    node = nodes[0]
    return exp.Paren(this=node).sql("clickhouse")


def _check_functions(tokens) -> None:
    for tok, nxt in zip(tokens, tokens[1:]):
        if nxt.token_type != TokenType.L_PAREN or tok.token_type in (TokenType.STRING, TokenType.IDENTIFIER):
            continue
        name = tok.text.lower()
        if tok.token_type == TokenType.IN:
            continue  # `x IN (...)`, the operator; the function form in(...) does not parse
        if name in DENIED_FUNCTIONS or name.startswith(DENIED_FUNCTION_PREFIXES):
            raise ScopeError(f"refused: function {tok.text}() is not allowed: it reads other tables, files or server state")


# --- deciding ------------------------------------------------------------------------------

def _visible_ctes(node: exp.Expression) -> set[str]:
    """Names of the query CTEs that a reference at `node` sees (not a CTE's own name in its body)."""
    names: set[str] = set()
    child, parent = node, node.parent
    while parent is not None:
        if isinstance(parent, exp.With):
            if isinstance(child, exp.CTE) and child in parent.expressions:
                before = parent.expressions[: parent.expressions.index(child)]
                names |= {c.alias for c in before if _is_query_cte(c)}
        else:
            w = parent.args.get("with_")
            if isinstance(w, exp.With) and child is not w:
                names |= {c.alias for c in w.expressions if _is_query_cte(c)}
        child, parent = parent, parent.parent
    return names


def _is_query_cte(cte: exp.Expression) -> bool:
    return isinstance(cte, exp.CTE) and not cte.args.get("scalar") and isinstance(cte.this, exp.Query)


def _in_target(node: exp.In) -> exp.Expression | None:
    """The identifier on the right of `x IN t` / `x IN (t)`, which ClickHouse reads as a table."""
    target = node.args.get("field")
    if target is None and len(node.expressions) == 1 and not node.args.get("query"):
        target = node.expressions[0]
    while isinstance(target, exp.Paren):
        target = target.this
    return target if isinstance(target, (exp.Column, exp.Identifier, exp.Dot, exp.Table)) else None


class _Tokens:
    def __init__(self, tokens):
        self.tokens = tokens
        self.by_start = {t.start: i for i, t in enumerate(tokens)}

    def index(self, ident: exp.Expression) -> int:
        start = ident.meta.get("start") if isinstance(ident, exp.Identifier) else None
        if start is None or start not in self.by_start:
            raise ScopeError(f"refused: could not place {ident.sql('clickhouse')} in the query text")
        return self.by_start[start]


def _plan(tree: exp.Expression, tokens, database: str, scopes: dict[str, str]) -> dict[int, tuple[int, str]]:
    """Edits to the token list: first token index -> (last token index, replacement text)."""
    toks = _Tokens(tokens)
    allowed = ", ".join(scopes)
    edits: dict[int, tuple[int, str]] = {}

    for node in tree.walk():
        if isinstance(node, exp.In):
            target = _in_target(node)
            if target is not None:
                name = target.sql("clickhouse").replace('"', "")
                raise ScopeError(f"refused: IN {name} reads a whole table; write IN (SELECT col FROM {name})")
        if isinstance(node, (exp.From, exp.Join)) and node.args.get("kind") != "ARRAY":
            if not isinstance(node.this, _FROM_SOURCES):
                raise ScopeError(f"refused: cannot tell what {node.this.sql('clickhouse')[:60]} reads")
        if isinstance(node, exp.CTE) and _is_query_cte(node):
            ident = node.args["alias"].this
            edits[toks.index(ident)] = (toks.index(ident), quote_name(CTE_PREFIX + node.alias))
        if not isinstance(node, exp.Table):
            continue
        if not isinstance(node.this, exp.Identifier):
            fn = node.this
            name = fn.name if isinstance(fn, exp.Anonymous) else (fn.sql_name() if isinstance(fn, exp.Func) else fn.sql("clickhouse"))
            if isinstance(fn, exp.Anonymous) and name.lower() in ALLOWED_TABLE_FUNCTIONS:
                continue
            raise ScopeError(f"refused: table function {name}() is not allowed")
        name, db, catalog = node.name, node.args.get("db"), node.args.get("catalog")
        shown = ".".join(p.name for p in (catalog, db, node.this) if p is not None)
        if catalog is not None or (db is not None and db.name != database):
            raise ScopeError(f"refused: {shown}: only {allowed} may be read")
        alias = node.args.get("alias")
        if alias is not None and alias.columns and not alias.name:  # how sqlglot reads dictionary('d')
            raise ScopeError(f"refused: table function {name}() is not allowed")
        if alias is not None and alias.columns:
            raise ScopeError(f"refused: {shown}: column names in an alias are not supported")
        first = toks.index(catalog or db or node.this)
        last = toks.index(alias.this) if alias is not None else toks.index(node.this)
        if db is None and name in _visible_ctes(node):
            edits[toks.index(node.this)] = (toks.index(node.this), quote_name(CTE_PREFIX + name)
                                            + ("" if alias is not None else f" AS {_text(node.this)}"))
            continue
        if name not in scopes:
            raise ScopeError(f"refused: {shown}: only {allowed} may be read")
        if isinstance(node.parent, exp.Final):
            if last + 1 < len(tokens) and tokens[last + 1].token_type == TokenType.FINAL:
                last += 1
        as_name = _text(alias.this) if alias is not None else _text(node.this)
        edits[first] = (last, f"(SELECT * FROM {quote_name(database)}.{quote_name(name)} FINAL "
                              f"WHERE ({scopes[name]})) AS {as_name}")
    return edits


def _text(ident: exp.Identifier) -> str:
    return quote_name(ident.name)


# --- writing -------------------------------------------------------------------------------

def _splice(sql: str, tokens, edits: dict[int, tuple[int, str]]) -> str:
    out: list[str] = []
    prev_end = None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.token_type == TokenType.SEMICOLON:
            i += 1
            continue
        if prev_end is not None:
            gap = sql[prev_end + 1: tok.start]
            out.append(gap if re.fullmatch(r"[ \t\r\n]*", gap) else " ")
        if i in edits:
            last, text = edits[i]
            out.append(text)
            prev_end = tokens[last].end
            i = last + 1
            continue
        out.append(sql[tok.start: tok.end + 1])
        prev_end = tok.end
        i += 1
    return "".join(out)


def _verify(out: str, database: str, predicates: dict[str, str]) -> None:
    """The spliced SQL reads each table only through its scoped subquery (or it is a bug here)."""
    try:
        tree = _DIALECT.parse(out)[0]
    except (ParseError, TokenError) as e:
        raise ScopeError(f"refused: the scoped query does not parse ({str(e).splitlines()[0]})") from None
    for node in tree.find_all(exp.Table):
        if not isinstance(node.this, exp.Identifier):
            if isinstance(node.this, exp.Anonymous) and node.this.name.lower() in ALLOWED_TABLE_FUNCTIONS:
                continue
        elif node.args.get("db") is None and node.name.startswith(CTE_PREFIX):
            continue
        elif node.args.get("db") is not None and node.text("db") == database and node.name in predicates:
            final, select = node.parent, node.parent.parent.parent if node.parent and node.parent.parent else None
            where = select.args.get("where") if isinstance(select, exp.Select) else None
            if (isinstance(final, exp.Final) and isinstance(select.parent, exp.Subquery) and where is not None
                    and where.this.sql("clickhouse") == predicates[node.name]):
                continue
        raise ScopeError(f"refused: internal error: {node.sql('clickhouse')} would be read without its scope")
