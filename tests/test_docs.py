"""Every example in the docs runs: the Python blocks of the README and docs/api.md (each page's in order, in one
namespace, as a reader would paste them) and the doctests of the public modules."""
import doctest
import re
from pathlib import Path

import pytest

import lib.interventions
import lib.reducers
import lib.relocation
import monkey_patch.capture
import monkey_patch.edit
import monkey_patch.routing

ROOT = Path(__file__).resolve().parents[1]
DOCTEST_MODULES = [monkey_patch.capture, monkey_patch.edit, monkey_patch.routing, lib.interventions, lib.reducers, lib.relocation]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("module", DOCTEST_MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_the_capture_and_edit_classes_have_a_doctest():
    assert "Capture(" in (monkey_patch.capture.Capture.__doc__ or "") and ">>>" in monkey_patch.capture.Capture.__doc__
    assert "Edit(" in (monkey_patch.edit.Edit.__doc__ or "") and ">>>" in monkey_patch.edit.Edit.__doc__


@pytest.mark.slow
@pytest.mark.parametrize("page, least", [("README.md", 3), ("docs/api.md", 5)])  # capture, edit, interventions (+ reduce, perplexity)
def test_python_blocks_run_as_written(page, least, tmp_path, monkeypatch):
    blocks = python_blocks(ROOT / page)
    assert len(blocks) >= least
    monkeypatch.chdir(tmp_path)  # anything an example writes lands here
    monkeypatch.syspath_prepend(str(ROOT))
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{page} python block {i + 1}", "exec"), namespace)
        except Exception as e:  # name the block, not just the line
            pytest.fail(f"{page} python block {i + 1} fails: {type(e).__name__}: {e}\n{block}")


def test_the_product_cites_nothing_its_user_does_not_have():
    """No issue numbers, no files outside the repository, no first person in the product's docs and code."""
    import subprocess
    files = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.sh", "*.toml", "*.cff"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    banned = re.compile(r"\bissue \d+|\bissue's\b|SPEC\.md|\.\./shared|\bI (?:take|think|ran|measured)\b", re.I)
    found = [f"{f}: {m.group()}" for f in files if not f.startswith("tests/")
             for m in banned.finditer((ROOT / f).read_text(errors="replace"))]
    assert not found, found
