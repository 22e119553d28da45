"""The one layer numbering of the project: 0-based, as the Hugging Face module index counts.

Layer i is the model's i-th decoder block (`model.model.layers[i]`, block i of a gpt-2/ checkpoint); its output is
`output_hidden_states[i + 1]` (entry 0 is the embedding). Command-line flags, JSON, sentences, figure axes and index
pages all count this way, as do heads, tokens, channels and columns. Every result JSON says so in `layers_are`.
Results written before this numbering counted layers from 1: a figure JSON of that time says "1-based" in
`layers_are`, a consequences.json or summary.json of that time says nothing (gpt-2/ training logs: gpt-2/stats_log.py).
"""

import json
from pathlib import Path

from lib.errors import UserError

LAYERS_ARE = "0-based"
STATEMENT = "Layers, heads, tokens, channels and columns are 0-based (layer i is the model's block i)."


def layer_range(num_layers: int) -> str:
    """The valid layers in words, as an error message names them."""
    return f"0..{num_layers - 1}"


def written_one_based(result: dict) -> bool:
    """Whether a result JSON (a figure's, consequences.json, summary.json) was written when layers counted from 1:
    it says "1-based" in `layers_are`, or has no `layers_are` at all."""
    return isinstance(result, dict) and result.get("layers_are", "1-based").startswith("1-based")


def read_current(path: Path) -> dict:
    """A result JSON read for a summary; a UserError where it counts layers from 1, so that no summary mixes the two
    numberings."""
    result = json.loads(Path(path).read_text())
    if written_one_based(result):
        raise UserError(f"{path} counts layers from 1 (written before layers were {LAYERS_ARE}): regenerate it with "
                        "its command (provenance.command) first")
    return result
