"""The results pages, rendered from the committed JSON as lib/summary.py renders summary.md: a number on a page is
read from its result file, so it cannot drift from it, and a regenerated result re-renders its page.

    results/consequences/README.md   every consequences.json under results/consequences/ (consequences.py)
    results/figures/README.md        the figure JSONs of every model folder under results/figures/ (reproduce.py)
    gpt-2/results/README.md          the gpt-2 runs' table.json and analysis.json files (lib/gpt2_pages.py)
    gpt-2/results/emergence/README.md  the emergence study's table.json (lib/emergence_page.py)
    README.md, docs/*.md, gpt-2/README.md
                                     their templates under docs/templates/ (lib/templates.py), with the numbers
                                     lib/page_values.py reads from the committed results

The prose of the results pages states method and definitions. A file written when layers counted from 1 is read
0-based (lib.layer_numbering.as_zero_based), and the page names such folders once. bench/README.md has its own
command, `python bench/pages.py`, since lib/ imports nothing of bench/.

    python -m lib.pages            # writes the pages; tests/test_pages.py checks the committed ones
"""
import json
import sys
from functools import partial
from pathlib import Path

from lib import compression, emergence_page, evaluation_report, gpt2_pages, page_values, scale_test, summary
from lib.cross_model import SIGNIFICANT
from lib.files import write_text
from lib.layer_numbering import STATEMENT, as_zero_based, written_one_based
from lib.paper_figures import FIGURES
from lib.provenance import ROOT
from lib.templates import render_page

CONSEQUENCES = Path("results/consequences")
FIGURES_DIR = Path("results/figures")
RENDERED = "<!-- Rendered by `python -m lib.pages` from the JSON files below it: edit lib/pages.py, not this page. -->"


def read(path: Path) -> tuple[dict, bool]:
    """A result JSON with 0-based layers, and whether its file counts them from 1."""
    result = json.loads(Path(path).read_text())
    return as_zero_based(result), written_one_based(result)


def _older(folders: list[str], what: str) -> list[str]:
    if not folders:
        return []
    return [f"Written when layers counted from 1 ({what}): {', '.join(f'`{f}/`' for f in folders)}; their layers "
            "are given here 0-based, one less than the folder's own files state.", ""]


def _demoted(lines: list[str]) -> list[str]:
    """consequences.md's sections one heading level down, under a folder's section."""
    return ["#" + line if line.startswith("## ") else line for line in lines]


# --- results/consequences/README.md --------------------------------------------------------------------------------

CONSEQUENCES_METHOD = """\
Perplexity of models under outlier interventions and under simulated compression, with Bondarenko et al.'s outlier
metrics, produced by `consequences.py` (code: `lib/perplexity.py`, `lib/compression.py`, `lib/interventions.py`).
Each folder holds `consequences.json` (every number, the exact command, the windows), `consequences.md` (its tables
with their definitions, and where the massive activation and the sink went in every intervened forward) and
`consequences.png` (perplexity per method and variant). Each section below states what its folder ran and gives its
tables; the command it states regenerates it (from the repository root). Other text: `--data wikitext|c4|pg19`
(online, through `datasets`), `--seqlen`, `--nsamples`; any registry model with `--model`. The gpt-2 checkpoints
come from `gpt-2/results/run_backcopy.sh`, `run_backcopy_peak.sh` and the emergence study
(`gpt-2/results/emergence/README.md`); they are not committed, and each JSON names the checkpoint and iteration
used."""

CONVENTIONS = """\
Perplexity = exp(mean next-token NLL) over non-overlapping windows, each scored on its own, fp32 on CPU. Compression
is simulated (quantize-dequantize) on every linear layer inside the decoder blocks; embeddings, norms and the LM
head stay fp32. A window that starts with a model's BOS never has the BOS or the first text token as a target.
Where a model's weights were converted (a dequantized GGUF), "fp32" means those weights held in fp32; its section
names the source."""


def nll_definition() -> str:
    return ("NLL change: the paired change of the mean token NLL against fp32 on the same windows (`nll_change`, "
            "lib/perplexity.py), ± its standard error over windows (`nll_change_stderr`), in nats. A change is called "
            f"larger than its error where it exceeds {SIGNIFICANT:g} standard errors (lib.cross_model.SIGNIFICANT).")


def definitions(reports: list[dict]) -> list[str]:
    used = list(dict.fromkeys(m for report in reports for m in report["methods"]))
    return ["## Definitions", "", CONVENTIONS, "",
            "Methods: " + "; ".join(f"`{m}`: {compression.METHODS[m]}" for m in used) + ".", "",
            evaluation_report.METRICS, "", evaluation_report.SINKS, "",
            "Interventions on activation outliers (each folder states its detection rule): " + evaluation_report.SITES,
            "", "Without the BOS: " + evaluation_report.WITHOUT_BOS, "",
            "Scale test: " + scale_test.DEFINITIONS, "", nll_definition(), ""]


def _conditions(r: dict):
    """(label, entry) of the compression methods and interventions of one model (the tables of the BOS removed and
    of the scale test state their NLL change themselves)."""
    yield from r["compression"].items()
    yield from r["interventions"].get("attention_sinks", {}).items()
    for site in r["interventions"].get("sites", []):
        for m, entry in site.items():
            if isinstance(entry, dict) and "nll_change" in entry:
                yield f"{m} (layer {site['layer']})", entry


def _change(entry: dict) -> str:
    return f"{entry['nll_change']:+.3g} ± {entry['nll_change_stderr']:.2g}"


def reading(r: dict) -> str:
    """One sentence per model: which conditions change its NLL by more than SIGNIFICANT standard errors."""
    measured = [(label, e) for label, e in _conditions(r) if e.get("nll_change_stderr") is not None]
    above = [f"{label} ({_change(e)})" for label, e in measured
             if abs(e["nll_change"]) > SIGNIFICANT * e["nll_change_stderr"]]
    within = [label for label, e in measured if abs(e["nll_change"]) <= SIGNIFICANT * e["nll_change_stderr"]]
    return (f"- {r['name']}: NLL change beyond {SIGNIFICANT:g} standard errors under "
            f"{'; '.join(above) or 'no condition'}; within them under {', '.join(within) or 'no condition'}.")


def consequences_section(folder: str, report: dict) -> list[str]:
    rows = report["results"]
    first = rows[0]
    where = first["baseline"].get("where", {})
    model = (first.get("provenance") or {}).get("model") or {}
    lines = [f"## {report['title']} (`{folder}/`)", "",
             f"Models: {', '.join(r['name'] for r in rows)}. " + evaluation_report.data_line(first["data"])]
    lines += [f"Input: {first['data']['input']['text']}."] if first["data"].get("input") else []
    lines += [f"Note: {first['data']['note']}."] if first["data"].get("note") else []
    lines += [f"Weights: {model['converted_from']}."] if model.get("converted_from") else []
    lines += [f"Activation-outlier rule: {report['outlier_rule']}.",
              f"Attention-sink rule: {where['sink_rule']}." if where.get("sink_rule") else
              "Attention-sink rule: not recorded in this consequences.json; the consequences.md the same run wrote "
              "states it."]
    lines += [f"Command: `{report['command']}`", "", f"Every table with its definitions: [consequences.md]({folder}/"
              "consequences.md).", ""]
    return lines + _demoted(evaluation_report.tables(report, brief=True)[1:]) + [
        "", "NLL change (see Definitions):", ""] + [reading(r) for r in rows] + [""]


def consequence_folders(root: Path) -> list[Path]:
    """The folders with a consequences.json, the language models first, then the gpt-2 runs."""
    found = [p.parent for p in (root / CONSEQUENCES).glob("**/consequences.json")]
    return sorted(found, key=lambda p: (p.relative_to(root / CONSEQUENCES).parts[0].startswith("gpt2"), str(p)))


def consequences_page(root: Path = ROOT) -> str:
    folders = consequence_folders(root)
    read_in = [(str(f.relative_to(root / CONSEQUENCES)), *read(f / "consequences.json")) for f in folders]
    lines = ["# Consequences of systematic outliers, measured", "", RENDERED, "", CONSEQUENCES_METHOD, "",
             STATEMENT, ""] + _older([name for name, _, older in read_in if older], "no `layers_are` in their "
                                     "consequences.json") + definitions([report for _, report, _ in read_in])
    for name, report, _ in read_in:
        lines += consequences_section(name, report)
    return "\n".join(lines).rstrip("\n") + "\n"


# --- results/figures/README.md -------------------------------------------------------------------------------------

FIGURES_METHOD = """\
The paper's figures computed on small models by `reproduce.py` (one script per figure, `python <figure>.py`; the
figures are registered in `lib/paper_figures`). Each model folder holds one JSON (every number, the rule, the input,
the provenance) and one picture per figure, and `index.md`, the folder's page with every figure's summary lines and
picture. `summary.md` sets the models side by side with the paper's pattern, property by property (`python
reproduce.py --summary`). Below, per folder: the command its figures record, and a line per figure with the columns
that figure gives the summary table, read from its JSON."""


def figure_folders(root: Path) -> list[Path]:
    return sorted({p.parent for name in FIGURES for p in (root / FIGURES_DIR).glob(f"**/{name}.json")})


def _figure_json(folder: Path, name: str) -> dict:
    path = folder / f"{name}.json"
    return read(path)[0] if path.is_file() else {}


def figure_lines(folder: Path, link: str) -> list[str]:
    """One line per figure: its description and, where it gives the summary table columns, their cells."""
    row = summary.model_row(folder, read=_figure_json)
    lines = []
    for name, figure in FIGURES.items():
        if not (folder / f"{name}.json").is_file():
            continue
        cells = "; ".join(f"{header}: {cell(row)}" for header, cell in figure.columns)
        lines.append(f"- [{name}]({link}/{name}.json): {figure.description}" + (f". {cells}" if cells else ""))
    return lines


def figures_section(root: Path, folder: Path) -> list[str]:
    link = str(folder.relative_to(root / FIGURES_DIR))
    first = next(_figure_json(folder, n) for n in FIGURES if (folder / f"{n}.json").is_file())
    command = (first.get("provenance") or {}).get("command", "not recorded")
    return [f"## {first.get('title', folder.name)} (`{link}/`)", "", f"Command: `{command}`. Page: "
            f"[{link}/index.md]({link}/index.md).", ""] + figure_lines(folder, link) + [""]


def figures_page(root: Path = ROOT) -> str:
    folders = figure_folders(root)
    older = [str(f.relative_to(root / FIGURES_DIR)) for f in folders
             if any(read(p)[1] for p in f.glob("*.json") if p.stem in FIGURES)]
    lines = ["# The paper's figures, measured", "", RENDERED, "", FIGURES_METHOD, "", STATEMENT, ""]
    lines += _older(older, '`layers_are` "1-based" in their figure JSONs')
    lines += [f"Models: {', '.join(f'`{f.relative_to(root / FIGURES_DIR)}/`' for f in folders)}. Across models: "
              "[summary.md](summary.md).", ""]
    for folder in folders:
        lines += figures_section(root, folder)
    return "\n".join(lines).rstrip("\n") + "\n"


# --- entry point ---------------------------------------------------------------------------------------------------

def gpt2_results_page(root: Path = ROOT) -> str:
    return gpt2_pages.page(root, RENDERED)


def gpt2_emergence_page(root: Path = ROOT) -> str:
    return emergence_page.page(root, RENDERED)


PAGES = {CONSEQUENCES / "README.md": consequences_page, FIGURES_DIR / "README.md": figures_page,
         gpt2_pages.PAGE: gpt2_results_page, emergence_page.PAGE: gpt2_emergence_page,
         **{Path(page): partial(render_page, page=page, value_functions=functions)
            for page, functions in page_values.VALUES.items()}}


def write_all(root: Path = ROOT) -> list[Path]:
    for page, render in PAGES.items():
        write_text(root / page, render(root))
    return [root / page for page in PAGES]


if __name__ == "__main__":
    for path in write_all():
        print(path, file=sys.stderr)
