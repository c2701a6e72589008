"""Source scans for the ownership tests: who writes a table, who spells a format (STYLE.md rule 13).

The scans read the shipped code (service/, handlers/) and the benchmarks; tests are left out, as their
factories build rows in any state on purpose (a dead job with ten attempts, say).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("service", "handlers", "benchmarks")
WRITES = frozenset({"insert", "update", "delete"})
RAW_WRITE = re.compile(r"\b(insert\s+into|update|delete\s+from)\s+{table}\b", re.IGNORECASE)


def sources() -> dict[str, str]:
    """Every scanned module's text, by its path relative to the repository."""
    return {
        path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8")
        for root in SCANNED
        for path in sorted((ROOT / root).rglob("*.py"))
    }


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of a module and of its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def string_literals(texts: Mapping[str, str] | None = None) -> Iterator[tuple[str, int, str]]:
    """(path, line, text) of every string constant in code, f-strings' literal parts included; docstrings
    are prose about formats, not a spelling of one, and are skipped."""
    for path, text in (sources() if texts is None else texts).items():
        tree = ast.parse(text, path)
        skipped = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped:
                yield path, node.lineno, node.value


def _table_names(tree: ast.AST, table: str) -> set[str]:
    """The names the table is known by in a module: its own and any `from service.db import t as x`."""
    names = {table}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "service.db":
            names |= {alias.asname for alias in node.names if alias.name == table and alias.asname}
    return names


def _names_table(node: ast.AST, names: set[str]) -> bool:
    """`jobs` or `db.jobs` (any attribute access ending in the table's name)."""
    return (isinstance(node, ast.Name) and node.id in names) or (isinstance(node, ast.Attribute) and node.attr in names)


def table_writes(table: str, texts: Mapping[str, str] | None = None) -> list[str]:
    """Where code writes `table`: `t.insert/update/delete(…)`, `insert/update/delete(t)` (sa., dialects'),
    and raw SQL text `INSERT INTO t` / `UPDATE t` / `DELETE FROM t`. One "path:line: what" per write."""
    raw = re.compile(RAW_WRITE.pattern.format(table=re.escape(table)), re.IGNORECASE)
    found = [
        f"{path}:{line}: raw SQL {match.group(0)!r}"
        for path, line, text in string_literals(texts)
        if (match := raw.search(text))
    ]
    for path, text in (sources() if texts is None else texts).items():
        tree = ast.parse(text, path)
        names = _table_names(tree, table)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            verb = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if verb not in WRITES:
                continue
            if isinstance(func, ast.Attribute) and _names_table(func.value, names):
                found.append(f"{path}:{node.lineno}: {table}.{verb}()")
            elif node.args and _names_table(node.args[0], names):
                found.append(f"{path}:{node.lineno}: {verb}({table})")
    return found


def literal_arguments(names: frozenset[str], texts: Mapping[str, str] | None = None) -> list[str]:
    """Calls passing one of the keyword arguments `names` a value built from a string literal or an
    f-string (`queueing_lock=f"poll:{id}"`), rather than from a function: "path:line: name"."""
    found = []
    for path, text in (sources() if texts is None else texts).items():
        for node in ast.walk(ast.parse(text, path)):
            if not isinstance(node, ast.Call):
                continue
            for keyword in node.keywords:
                if keyword.arg in names and _built_from_text(keyword.value):
                    found.append(f"{path}:{node.lineno}: {keyword.arg}")
    return found


def _built_from_text(node: ast.AST) -> bool:
    """A string literal or f-string in the expression, outside any call (a call's result was built there)."""
    if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return True
    return not isinstance(node, ast.Call) and any(_built_from_text(child) for child in ast.iter_child_nodes(node))
