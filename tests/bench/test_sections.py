"""``fewstep.bench.report.replace_section``: the one writer of generated markdown sections (benchmarks and
``bench-lm`` use it)."""

import re
from pathlib import Path

import pytest

from fewstep.bench.report import markers, replace_section

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_replace_append_and_refuse():
    begin, end = markers("x")
    page = f"# T\n\nbefore\n{begin}\nold\n{end}\nafter {end}\n"
    new = replace_section(page, begin, end, f"{begin}\nnew\n{end}")
    assert new == f"# T\n\nbefore\n{begin}\nnew\n{end}\nafter {end}\n"  # up to the first end after begin
    assert replace_section("# T\n\n", begin, end, "B") == "# T\n\nB\n"
    assert replace_section(None, begin, end, "B") == "# Benchmarks\n\nB\n"
    assert replace_section(f"{end} then {begin}", begin, end, "B").endswith("\n\nB\n")  # end before begin: none
    with pytest.raises(ValueError, match="no <!-- x:begin --> ... <!-- x:end --> section"):
        replace_section("# T\n", begin, end, "B", append=False)


def test_every_generated_section_of_the_docs_rewrites_to_itself():
    pages = 0
    for page in DOCS.glob("*.md"):
        text = page.read_text()
        for begin in re.findall(r"<!-- [^>]*?:(?:begin|start) -->", text):
            end = re.sub(r":(begin|start) -->$", ":end -->", begin)
            block = begin + text.split(begin, 1)[1].split(end, 1)[0] + end
            assert replace_section(text, begin, end, block, append=False) == text, (page.name, begin)
            pages += 1
    assert pages >= 5
