"""The pages are what lib.pages (and bench/pages.py) render from the committed results, byte for byte: a regenerated
result must re-render its page (`python -m lib.pages`), and no number on a page can drift from its file. The
hand-written pages come from templates (docs/templates/), whose every literal number is static, with its reason."""
import importlib.util
import json

import pytest

from lib import bos_effect, cross_model, gpt2_pages, page_values, pages, templates
from lib.layer_numbering import as_zero_based, written_one_based
from lib.provenance import ROOT

TEMPLATES = {str(p.relative_to(ROOT / templates.TEMPLATES)): p.read_text()
             for p in sorted((ROOT / templates.TEMPLATES).rglob("*.md"))}


def bench_pages():
    """bench/pages.py, imported from its file (lib/ cannot import bench/)."""
    spec = importlib.util.spec_from_file_location("bench_pages", ROOT / "bench" / "pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def values(page: str) -> dict:
    """Every field of a page's template with its value, from the value functions of the page."""
    functions = bench_pages().VALUES if page == "bench/README.md" else page_values.VALUES[page]
    return {k: v for f in functions for k, v in f(ROOT).items()}


@pytest.mark.parametrize("page", list(pages.PAGES), ids=str)
def test_the_committed_page_is_what_its_renderer_makes(page):
    assert (ROOT / page).read_text() == pages.PAGES[page](ROOT), \
        f"{page} differs from what lib/pages.py renders from the committed results: run `python -m lib.pages`"


def test_the_committed_bench_page_is_what_its_renderer_makes():
    bench = bench_pages()
    assert (ROOT / bench.PAGE).read_text() == bench.page(ROOT), \
        "bench/README.md differs from what bench/pages.py renders from bench/results/: run `python bench/pages.py`"


def test_every_template_has_its_page_and_says_how_it_is_rendered():
    rendered = {str(p) for p in pages.PAGES} | {"bench/README.md"}
    assert set(TEMPLATES) <= rendered and set(page_values.VALUES) | {"bench/README.md"} == set(TEMPLATES)
    for page, text in TEMPLATES.items():
        command = "python bench/pages.py" if page == "bench/README.md" else "python -m lib.pages"
        assert f"<!-- Rendered by `{command}` from `{templates.template_path(page)}`: edit the template, not this " \
               "page. -->" in text.splitlines()[:3], page


@pytest.mark.parametrize("page", TEMPLATES)
def test_a_template_has_a_value_for_every_field_and_a_field_for_every_value(page):
    fields, found = set(templates.FIELD.findall(TEMPLATES[page])), set(values(page))
    assert fields == found, f"{page}: fields without a value {sorted(fields - found)}, values without a field " \
        f"{sorted(found - fields)}"


@pytest.mark.parametrize("page", TEMPLATES)
def test_every_template_number_is_a_field_or_listed_as_static(page):
    left = templates.uncovered(TEMPLATES[page], page)
    assert not left, f"{len(left)} numbers of {templates.template_path(page)} are neither fields nor listed in " \
        "lib.templates.STATIC:\n" + "\n".join(left)


def test_every_static_entry_still_matches():
    stale = templates.stale(TEMPLATES)
    assert not stale, f"STATIC entries whose text is gone from the templates (remove them): {stale}"


def test_a_template_is_filled_field_by_field():
    assert templates.render("{{a}} x {{b_2}} {a} {{ c }}", {"a": "1", "b_2": "2.5"}) == "1 x 2.5 {a} {{ c }}"
    with pytest.raises(KeyError, match="b_2"):
        templates.render("{{a}} {{b_2}}", {"a": "1"})


def test_the_committed_summary_is_what_the_figure_jsons_give():
    """The README's findings and the BOS table are rendered from the figure JSONs; results/figures/summary.json,
    which `reproduce.py --summary` renders from the same files, says the same."""
    rows = json.loads((ROOT / "results/figures/summary.json").read_text())["models"]
    data = page_values.cross_model_data(ROOT)
    stale = "results/figures/summary.json is stale: python reproduce.py --summary-only --savedir results/figures"
    assert [cross_model.finding(d) for d in data] == [r["finding"] for r in rows], stale
    gemma = next(r for r in rows if r["model"] == "gemma3_270m")
    found = bos_effect.table(page_values.consequences(ROOT, "gemma3_270m")["results"][0],
                             ROOT / "results/figures/gemma3_270m")
    assert json.loads(json.dumps(found)) == gemma["bos_effect"], stale


def test_the_findings_page_states_the_criteria_of_lib_cross_model():
    """The criteria under the pattern table are lib.cross_model.CRITERIA, as summary.md states them."""
    text = " ".join((ROOT / "docs/findings.md").read_text().split())
    assert " ".join(cross_model.CRITERIA.split()) in text


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
