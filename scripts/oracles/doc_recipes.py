"""Runs the recipes of docs/analysis.md against a real run directory and checks that the pandas,
polars and duckdb versions of each recipe give the same table. A recipe is a ```python block whose
first line is `# recipe: NAME (LIBRARY)` and that reads `run = "runs/math-tiny"`; it leaves its table in
the variable of the same name (dashes as underscores). Prints JSON: how many recipes ran, pandas'
by-position table, the sample count of the by-example table and the largest |lp_old - mu| of the
by-finish table.

usage: doc_recipes.py docs/analysis.md RUN
"""
import contextlib
import io
import json
import math
import re
import sys

doc, run = sys.argv[1], sys.argv[2]
blocks = re.findall(r"```python\n(.*?)```", open(doc).read(), re.S)


def records(table):
    """A pandas or polars DataFrame, or a duckdb relation, as a list of plain dicts."""
    if hasattr(table, "to_dicts"):
        rows = table.to_dicts()
    elif hasattr(table, "to_dict"):
        rows = table.to_dict(orient="records")
    else:
        rows = table.df().to_dict(orient="records")
    plain = lambda v: v.item() if hasattr(v, "item") else v
    return [{k: plain(v) for k, v in row.items()} for row in rows]


def same(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-300)
    return a == b


tables = {}
for block in blocks:
    header = re.match(r"# recipe: ([\w-]+) \((\w+)\)\n", block)
    if not header:
        continue
    name, library = header.groups()
    code = block.replace('run = "runs/math-tiny"', f"run = {run!r}")
    assert code != block, f"recipe {name} ({library}) does not set run = \"runs/math-tiny\""
    scope = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, f"docs/analysis.md: {name} ({library})", "exec"), scope)
    tables.setdefault(name, {})[library] = records(scope[name.replace("-", "_")])

for name, by_library in tables.items():
    assert set(by_library) == {"pandas", "polars", "duckdb"}, f"{name}: {sorted(by_library)}"
    reference = by_library["pandas"]
    assert reference, f"{name}: pandas' table is empty"
    for library, rows in by_library.items():
        assert len(rows) == len(reference), f"{name}: {library} has {len(rows)} rows, pandas {len(reference)}"
        for i, (row, want) in enumerate(zip(rows, reference)):
            assert list(row) == list(want), f"{name}: {library} columns {list(row)} vs {list(want)}"
            for key in want:
                assert same(row[key], want[key]), f"{name} row {i} {key}: {library} {row[key]} vs pandas {want[key]}"

print(json.dumps({
    "recipes": sum(len(v) for v in tables.values()),
    "by_position": tables["by-position"]["pandas"],
    "samples": sum(r["samples"] for r in tables["by-example"]["pandas"]),
    "max_abs_gap": max(r["max_abs_gap"] for r in tables["by-finish"]["pandas"]),
}))
