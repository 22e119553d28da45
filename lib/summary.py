"""One table across models (the paper's Figure 1 and Figures 13-22 side by side): what reproduce.py found in each
<savedir>/<model>/, and the consequences where consequences.py ran, in <savedir>/summary.md and summary.json.

    python reproduce.py --summary --savedir figures
"""
import json
from pathlib import Path

from lib.errors import UserError
from lib.files import write_json, write_text
from lib.outliers import CATEGORIES
from lib.provenance import provenance, short

FIGURE = "existence_activation_outliers_layer"  # a folder holding its JSON is a model reproduce.py ran on


def _read(folder: Path, name: str) -> dict:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def model_row(folder: Path, consequences_dir: Path | None = None) -> dict:
    """The summary of one model's figure folder (and its consequences, if consequences_dir/<model>/ has them)."""
    prompt = _read(folder, FIGURE)
    calib = _read(folder, "pos_activation_outliers_layer")
    weight = _read(folder, "existence_weight_outliers").get("writer") or {}
    attention = _read(folder, "pos_attention_outliers")
    emergence = _read(folder, "lifecycle_emergence")
    gone = _read(folder, "lifecycle_disappearance")
    row = {
        "model": prompt.get("model", folder.name), "title": prompt.get("title", folder.name),
        "first_outlier_layer": (calib.get("outlier_layers") or [None])[0],
        "outlier_layers": calib.get("outlier_layers", []),
        "prompt_outlier_tokens": [prompt["tokens"][t] for t in prompt.get("outlier_tokens", [])],
        "prompt_outlier_channels": prompt.get("outlier_channels", []),
        "writer_column": weight.get("column"), "writer_column_ratio": weight.get("ratio"),
        "writer_column_rank": weight.get("ratio_rank"),
        "emergence_layer": emergence.get("layer") if emergence.get("outliers_found") else None,
        "sink_layers": attention.get("outlier_layers", []),
        "sink_key_categories": attention.get("categories"),
        "disappearance_layer": gone.get("layer") if gone.get("outliers_found") else None,
        "outlier_token_categories": calib.get("categories"),
        "rule": calib.get("rule"), "calibration": calib.get("calibration"),
        "provenance": prompt.get("provenance"),
    }
    cons = consequences_dir / row["model"] / "consequences.json" if consequences_dir else None
    if cons is not None and cons.is_file():
        result = json.loads(cons.read_text())["results"][0]
        row["consequences"] = {"fp32": result["baseline"]["ppl"],
                               **{m: v.get("ppl") for m, v in result["compression"].items()},
                               **{m: v.get("ppl") for m, v in result["interventions"].get("attention_sinks", {}).items()}}
    return row


def _cell(x):
    if x is None or x == []:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, list):
        return ", ".join(str(v) for v in x)
    return str(x)


def _shares(categories):
    if not categories or not categories.get("count"):
        return "-"
    return " / ".join(f"{categories[k]:.0%}" for k in CATEGORIES)


def write_summary(savedir, consequences_dir=None) -> tuple[Path, Path, list]:
    """summary.md and summary.json in savedir, over every model folder reproduce.py wrote there."""
    savedir = Path(savedir)
    folders = sorted(p.parent for p in savedir.glob(f"*/{FIGURE}.json"))
    if not folders:
        raise UserError(f"no model folders with figure results in {savedir}: run reproduce.py --savedir {savedir} first")
    rows = [model_row(f, Path(consequences_dir) if consequences_dir else None) for f in folders]
    lines = [f"# Systematic outliers across {len(rows)} model(s)", "",
             "Layers 1-based; tokens, channels and columns 0-based. Token categories: "
             + " / ".join(CATEGORIES) + " (share of outlier tokens; of sink keys). Each row comes from the model's "
             "figure JSONs in this folder (`python reproduce.py --summary`).", "",
             "| model | first outlier layer (calibration) | prompt outlier tokens (channels) | down_proj column writing "
             "it (ratio, rank) | emergence / disappearance layer | sink layers | outlier token categories "
             "| sink key categories |", "|---" * 8 + "|"]
    for r in rows:
        column = "-" if r["writer_column"] is None else \
            f"{r['writer_column']} ({r['writer_column_ratio']:.3g}, rank {r['writer_column_rank']})"
        lines.append(f"| {r['title']} | {_cell(r['first_outlier_layer'])} | {_cell(r['prompt_outlier_tokens'])} "
                     f"({_cell(r['prompt_outlier_channels'])}) | {column} | {_cell(r['emergence_layer'])} / "
                     f"{_cell(r['disappearance_layer'])} | {_cell(r['sink_layers'])} | "
                     f"{_shares(r['outlier_token_categories'])} | {_shares(r['sink_key_categories'])} |")
    lines += [""] + [f"- {r['title']}: made by {short(r['provenance'])}" for r in rows if r.get("provenance")]
    with_cons = [r for r in rows if "consequences" in r]
    if with_cons:
        keys = list(dict.fromkeys(k for r in with_cons for k in r["consequences"]))
        lines += ["", "## Perplexity (consequences.py)", "", "| model | " + " | ".join(keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        for r in with_cons:
            lines.append(f"| {r['title']} | " + " | ".join(_cell(r["consequences"].get(k)) for k in keys) + " |")
    md, js = savedir / "summary.md", savedir / "summary.json"
    write_text(md, "\n".join(lines) + "\n")
    write_json(js, {"models": rows, "provenance": provenance()})
    return md, js, rows
