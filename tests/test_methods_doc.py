"""docs/methods.md cannot drift: its config tables equal what the config classes say, and every alias has one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from adapterkit.configs.registry import ADAPTER_CONFIG_MAP, DEPRECATED_ALIASES
from adapterkit.methods import method_for

DOCS = Path(__file__).parents[1] / "docs"
_spec = importlib.util.spec_from_file_location("make_methods_tables", DOCS / "make_methods_tables.py")
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)

TEXT = (DOCS / "methods.md").read_text()
BLOCKS = tables.table_blocks(TEXT)


def test_methods_md_has_tables():
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize(("names", "written"), BLOCKS, ids=[" ".join(names) for names, _ in BLOCKS])
def test_table_equals_the_config_classes(names, written):
    expected = tables.render_table(names)
    assert written == expected, (
        f"the table for {names} in docs/methods.md is stale; run "
        "`PYTHONPATH=src python docs/make_methods_tables.py` to regenerate it"
    )


def _usable(alias: str) -> bool:
    """Whether a registered method builds the alias's config (an alias may land before its method)."""
    try:
        method_for(ADAPTER_CONFIG_MAP[alias]())
    except ValueError:
        return False
    return True


def test_every_usable_alias_has_a_table():
    documented = {name for names, _ in BLOCKS for name in names}
    missing = sorted(a for a in set(ADAPTER_CONFIG_MAP) - DEPRECATED_ALIASES - documented if _usable(a))
    assert not missing, f"aliases without a section and key table in docs/methods.md: {missing}"


def test_rendering_marks_values_and_unions_keys():
    table = tables.render_table(["lora", "ia3"])
    assert table.splitlines()[0] == "| key | `lora` | `ia3` |"
    assert "| `composition_mode` | `'add'` | `'scale'` |" in table
    assert "| `attn_matrices` | `['q', 'v']` | `['k', 'v']` |" in table


def test_unknown_column_is_refused():
    with pytest.raises(ValueError, match="neither a config alias"):
        tables.render_table(["no_such_method"])


def test_check_mode_reports_a_stale_table(tmp_path, capsys):
    path = tmp_path / "methods.md"
    path.write_text("<!-- keys: lora -->\n| key | `lora` |\n<!-- /keys -->\n")
    assert tables.main(["--check", "--path", str(path)]) == 1
    assert tables.main(["--path", str(path)]) == 0
    assert tables.main(["--check", "--path", str(path)]) == 0
    assert path.read_text() == "<!-- keys: lora -->\n" + tables.render_table(["lora"]) + "<!-- /keys -->\n"
