"""Rewrite the STATS field tables of docs/PROTOCOL.md section 6 from djn_stats.h.

Run with the repository's interpreter after a build: ``.venv/bin/python
scripts/stats_tables.py``. test_exporter checks that the tables equal the descriptor table,
so a counter added to djn_stats.h without running this fails the tests."""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import djinn  # noqa: E402

SCOPES = (
    ("server", "Server scope", "; operators only"),
    ("session", "Session scope", ""),
    ("device", "Device scope", ", plus `name`; each entry of `devices`"),
)


def table(rows):
    out = ["| wire key | type | Python key | doc |", "|---|---|---|---|"]
    for _, wire, py, doc in rows:
        kind = "float64" if wire in FLOATS else "uint"
        out.append(f"| `{wire}` | {kind} | `{py}` | {doc} |")
    return "\n".join(out)


def main():
    path = os.path.join(ROOT, "docs", "PROTOCOL.md")
    text = open(path).read()
    fields = djinn._C._stats_fields()
    for scope, title, extra in SCOPES:
        rows = [f for f in fields if f[0] == scope]
        pat = re.compile(
            r"\*\*" + title + r"\*\* \(\d+ rows[^)]*\):\n\n(?:\|.*\n)+"
        )
        new = f"**{title}** ({len(rows)} rows{extra}):\n\n{table(rows)}\n"
        text, n = pat.subn(lambda _: new, text, count=1)
        assert n == 1, f"the {title} table was not found in {path}"
    open(path, "w").write(text)


# float64 fields (djn_stats.h, type F64): the only one so far
FLOATS = {"data_fragmentation"}

if __name__ == "__main__":
    main()
