"""One table across models (the paper's Figure 1 and Figures 13-22 side by side): what reproduce.py found in each
<savedir>/<model>/, and the consequences where consequences.py ran, in <savedir>/summary.md and summary.json, with
the picture across models beside them (summary.png) and the paper's pattern per model (lib/cross_model.py).
The columns are those the registered figures declare (lib/paper_figures), read from their JSONs.

    python reproduce.py --summary --savedir figures
"""
from pathlib import Path

from lib import bos_effect, cross_model
from lib.errors import UserError
from lib.files import write_json, write_text
from lib.layer_numbering import LAYERS_ARE, STATEMENT, read_current
from lib.outliers import CATEGORIES
from lib.paper_figures import FIGURES
from lib.paper_figures.figure import cell
from lib.provenance import provenance, short


def _read(folder: Path, name: str) -> dict:
    path = folder / f"{name}.json"
    return read_current(path) if path.is_file() else {}


def model_row(folder: Path, consequences_dir: Path | None = None, read=_read) -> dict:
    """The summary of one model's figure folder: what each registered figure gives the table from its JSON (its
    defaults where the JSON is missing; read(folder, name) reads it), and the consequences if
    consequences_dir/<model>/ has them."""
    results = {name: read(folder, name) for name in FIGURES}
    first = next((r for r in results.values() if r), {})
    row = {"model": first.get("model", folder.name), "title": first.get("title", folder.name)}
    for name, figure in FIGURES.items():
        if figure.summary is not None:
            row.update(figure.summary(results[name]))
    row["provenance"] = first.get("provenance")
    row["input"] = first.get("input", {}).get("prepended", [])
    rooms = [r["headroom"] for r in results.values() if r.get("headroom")]
    row["headroom"] = max(rooms, key=lambda r: r["largest_abs"]) if rooms else None
    cons = consequences_dir / row["model"] / "consequences.json" if consequences_dir else None
    if cons is not None and cons.is_file():
        result = read_current(cons)["results"][0]
        row["consequences"] = {"fp32": result["baseline"]["ppl"],
                               **{m: v.get("ppl") for m, v in result["compression"].items()},
                               **{m: v.get("ppl") for m, v in result["interventions"].get("attention_sinks", {}).items()},
                               **({"without the BOS": result["bos_removed"]["ppl"]} if "bos_removed" in result else {})}
        row["bos_effect"] = bos_effect.table(result, folder)
    return row


def _prepended(row: dict) -> str:
    return ", ".join(f"{t['token']} ({t['id']})" for t in row.get("input") or []) or "none"


def _headroom(row: dict) -> str:
    room = row.get("headroom")
    if not room:
        return "-"
    return f"{cell(room['largest_abs'])} (layer {room['layer']}; {cell(room['share_of_largest_finite']['float16'])} x)"


def write_summary(savedir, consequences_dir=None) -> tuple[Path, Path, list]:
    """summary.md and summary.json in savedir, over every model folder reproduce.py wrote there."""
    savedir = Path(savedir)
    folders = sorted({p.parent for name in FIGURES for p in savedir.glob(f"*/{name}.json")})
    if not folders:
        raise UserError(f"no model folders with figure results in {savedir}: run reproduce.py --savedir {savedir} first")
    rows = [model_row(f, Path(consequences_dir) if consequences_dir else None) for f in folders]
    columns = [("prepended", _prepended)] + [column for figure in FIGURES.values() for column in figure.columns] + [
        ("largest \\|h\\| (x float16's largest finite value)", _headroom)]
    lines = [f"# Systematic outliers across {len(rows)} model(s)", "",
             STATEMENT + " Token categories: "
             + " / ".join(CATEGORIES) + " (share of outlier tokens; of sink keys). Prepended: the special tokens "
             "every prompt and window starts with (the tokenizer's own). Each row comes from the model's figure JSONs "
             "in this folder (`python reproduce.py --summary`).", "",
             "| model | " + " | ".join(header for header, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['title']} | " + " | ".join(render(r) for _, render in columns) + " |")
    lines += [""] + [f"- {r['title']}: made by {short(r['provenance'])}" for r in rows if r.get("provenance")]
    with_cons = [r for r in rows if "consequences" in r]
    if with_cons:
        keys = list(dict.fromkeys(k for r in with_cons for k in r["consequences"]))
        lines += ["", "## Perplexity (consequences.py)", "", "| model | " + " | ".join(keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        for r in with_cons:
            lines.append(f"| {r['title']} | " + " | ".join(cell(r["consequences"].get(k)) for k in keys) + " |")
    for r in rows:
        if r.get("bos_effect"):
            lines += ["", f"## Without the BOS: {r['title']} (beyond the paper)", ""] + bos_effect.markdown(
                r["title"], r["bos_effect"])
    md, js = savedir / "summary.md", savedir / "summary.json"
    data = [cross_model.model_data(f, r, Path(consequences_dir) if consequences_dir else None)
            for f, r in zip(folders, rows)]
    picture = cross_model.draw(data, savedir / "summary.png")
    lines += cross_model.markdown(data, picture.name)
    for r, d in zip(rows, data):
        r["finding"] = cross_model.finding(d)
        r["paper_pattern"] = [{"property": p, "verdict": v, "numbers": x} for p, v, x in cross_model.properties(d)]
    write_text(md, "\n".join(lines) + "\n")
    write_json(js, {"layers_are": LAYERS_ARE, "models": rows, "paper_pattern_criteria": cross_model.CRITERIA,
                    "provenance": provenance()})
    return md, js, rows
