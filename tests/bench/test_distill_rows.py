"""``benchmarks/distill.py --from-docs``: the rows read back from the generated section of docs/benchmarks.md print
that section again, character for character, so a later session can resume from them on another machine."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("distill_benchmark", ROOT / "benchmarks" / "distill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_rows_read_back_from_the_docs_print_the_same_section():
    script = _script()
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    rows = script.rows_from_docs(page)
    section = page.split(script.START + "\n", 1)[1].split("\n" + script.END, 1)[0]
    assert script.table(rows, "`benchmarks/distill.py`, once per model") == section
    assert {r["model"] for r in rows} == {"digits-edm", "digits-flow"}
    assert all(r["kind"] != "student" or r["method"] in r["label"] for r in rows)
    with pytest.raises(SystemExit, match="no <!-- distill:start -->"):
        script.rows_from_docs("# nothing here\n")
