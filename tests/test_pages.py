"""The results pages are what lib.pages renders from the committed JSON, byte for byte: a regenerated result must
re-render its page (`python -m lib.pages`), and no number on a page can drift from its file."""
import json

import pytest

from lib import gpt2_pages, pages
from lib.layer_numbering import as_zero_based, written_one_based
from lib.provenance import ROOT


@pytest.mark.parametrize("page", list(pages.PAGES), ids=str)
def test_the_committed_page_is_what_its_renderer_makes(page):
    assert (ROOT / page).read_text() == pages.PAGES[page](ROOT), \
        f"{page} differs from what lib/pages.py renders from the committed JSON: run `python -m lib.pages`"


def test_a_file_counting_layers_from_1_is_read_0_based():
    older = {"results": [{"interventions": {"sites": [{"layer": 1, "zero": {"edited_layer": 1, "ppl": 2.0,
                                                                             "masked_layers": [2, 3]}}],
                                            "outlier_layers": [1, 2], "dominant_channel": 163},
                          "scale_test": {"layers": {"1": {"queries": 10}, "18": {"queries": 12}}},
                          "baseline": {"where": {"massive": {"largest_layer": 14, "layers": [1, 14]}}},
                          "provenance": {"layer": 5}}]}
    read = as_zero_based(older)
    r = read["results"][0]
    assert read["layers_are"] == "0-based" and not written_one_based(read)
    assert r["interventions"]["sites"][0] == {"layer": 0, "zero": {"edited_layer": 0, "ppl": 2.0, "masked_layers": [1, 2]}}
    assert r["interventions"]["outlier_layers"] == [0, 1] and r["interventions"]["dominant_channel"] == 163
    assert r["scale_test"]["layers"] == {"0": {"queries": 10}, "17": {"queries": 12}}
    assert r["baseline"]["where"]["massive"] == {"largest_layer": 13, "layers": [0, 13]}
    assert r["provenance"] == {"layer": 5}
    assert as_zero_based(read) is read


def test_the_consequences_page_gives_older_files_0_based_layers():
    """A folder whose consequences.json counts from 1 shows each site one layer lower than its own file, and the
    page names it among the older folders."""
    text = (ROOT / pages.CONSEQUENCES / "README.md").read_text()
    for folder in pages.consequence_folders(ROOT):
        stored = json.loads((folder / "consequences.json").read_text())
        name = f"`{folder.relative_to(ROOT / pages.CONSEQUENCES)}/`"
        older_line = next((line for line in text.splitlines() if line.startswith("Written when layers")), "")
        assert (name in older_line) == written_one_based(stored)
        shift = 1 if written_one_based(stored) else 0
        for r in stored["results"]:
            for site in r["interventions"].get("sites", []):
                assert f"| {r['name']} | " in text and f" | {site['layer'] - shift} | " in text


def test_the_gpt2_page_gives_older_tables_0_based_layers(tmp_path):
    """A compare.py table.json without `layers_are` counts from 1: the gpt-2 results page gives its layers one
    lower; one that says 0-based is given as it is."""
    folder = tmp_path / gpt2_pages.RESULTS / "run"
    folder.mkdir(parents=True)
    row = {"variant": "default", "ratio_layer": 2}
    (folder / "table.json").write_text(json.dumps({"rows": [row]}))
    assert gpt2_pages.variant_rows(tmp_path, "run")["default"]["ratio_layer"] == 1
    (folder / "table.json").write_text(json.dumps({"rows": [row], "layers_are": "0-based"}))
    assert gpt2_pages.variant_rows(tmp_path, "run")["default"]["ratio_layer"] == 2
