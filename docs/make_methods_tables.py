"""Generate the config key/default tables of docs/methods.md from the config classes.

Each table in methods.md sits between two markers::

    <!-- keys: seq_bn double_seq_bn AdapterPlusConfig -->
    | key | `seq_bn` | ... |
    <!-- /keys -->

The names after ``keys:`` are config aliases (``ADAPTER_CONFIG_MAP``) or config class names exported by
``adapterkit``; each becomes one column holding the defaults of that config (a config union, one column per
part: `` `mam` [0] ``, `` `mam` [1] ``). Run

    PYTHONPATH=src python docs/make_methods_tables.py          # rewrite the tables in place
    PYTHONPATH=src python docs/make_methods_tables.py --check  # exit 1 if a table is stale

``tests/test_methods_doc.py`` runs the same comparison, so the tables cannot drift from the code.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

METHODS_MD = Path(__file__).with_name("methods.md")

BLOCK = re.compile(r"(<!-- keys: (?P<names>[^>]*?) -->\n)(?P<table>.*?)(<!-- /keys -->)", flags=re.DOTALL)


def resolve(name: str) -> list[tuple[object, str]]:
    """The columns of an alias or an exported config class name: (config, header) pairs, one per union part."""
    import adapterkit

    if name in adapterkit.ADAPTER_CONFIG_MAP:
        config, header = adapterkit.ADAPTER_CONFIG_MAP[name](), f"`{name}`"
    else:
        cls = getattr(adapterkit, name, None)
        if cls is None or not (isinstance(cls, type) and issubclass(cls, adapterkit.AdapterConfig)):
            raise ValueError(
                f"methods.md table column {name!r} is neither a config alias nor an adapterkit config class"
            )
        config, header = cls(), f"`{name}()`"
    parts = getattr(config, "configs", None)  # a config union: one column per part
    if isinstance(parts, tuple):
        return [(part, f"{header} [{i}]") for i, part in enumerate(parts)]
    return [(config, header)]


def format_value(value) -> str:
    """A default as Python source, in backticks (``|`` escaped for markdown)."""
    return "`" + repr(value).replace("|", "\\|") + "`"


def render_table(names: list[str]) -> str:
    """The markdown table of every key of the named configs (union, in field order) and its defaults."""
    columns = [column for name in names for column in resolve(name)]
    keys: list[str] = []
    for config, _ in columns:
        for key in config.to_dict():
            if key != "architecture" and key not in keys:
                keys.append(key)
    lines = ["| key | " + " | ".join(header for _, header in columns) + " |"]
    lines.append("|---|" + "---|" * len(columns))
    for key in keys:
        cells = [format_value(config[key]) if key in config.to_dict() else "-" for config, _ in columns]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_blocks(text: str) -> list[tuple[list[str], str]]:
    """Every (column names, table text as written) pair of a methods.md text."""
    return [(m.group("names").split(), m.group("table")) for m in BLOCK.finditer(text)]


def regenerate(text: str) -> str:
    """``text`` with every table replaced by the one the config classes give."""
    return BLOCK.sub(lambda m: m.group(1) + render_table(m.group("names").split()) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a table is stale")
    parser.add_argument("--path", type=Path, default=METHODS_MD)
    args = parser.parse_args(argv)
    text = args.path.read_text()
    new = regenerate(text)
    if args.check:
        stale = [" ".join(names) for (names, old), (_, fresh) in zip(table_blocks(text), table_blocks(new), strict=True)
                 if old != fresh]
        if stale:
            print("stale tables in methods.md: " + "; ".join(stale), file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.path.write_text(new)
        print(f"rewrote the tables of {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
