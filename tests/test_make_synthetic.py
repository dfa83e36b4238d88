"""`python -m scripts.make_synthetic`: every dataset's generator is reachable by name and writes
files its own builder expects (each builder's test round-trips them in full)."""

from __future__ import annotations

import pytest

from scripts import make_synthetic


@pytest.mark.parametrize("name", sorted(make_synthetic.DATASETS))
def test_every_dataset_writes_a_synthetic_corpus(name, tmp_path, capsys):
    assert make_synthetic.main([name, "--out", str(tmp_path), "--num-examples", "20"]) == 0
    assert f"wrote synthetic {name}" in capsys.readouterr().out
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(p.stat().st_size > 0 for p in written)


def test_unknown_dataset_lists_the_known_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        make_synthetic.main(["nope", "--out", str(tmp_path)])
    assert "mnist" in capsys.readouterr().err
