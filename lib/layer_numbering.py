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


# the keys whose values are layer numbers (an int, a list of ints, or a dict keyed by layer) in the result JSONs
LAYER_KEYS = frozenset({"layer", "layers", "outlier_layers", "flagged_layers", "paper_rule_layers", "masked_layers",
                        "largest_layer", "first_layer", "first_sink_layer", "sink_first_layer", "highest_layer",
                        "lowest_layer", "late_layer_shown", "massive_layer", "edited_layer"})


def as_zero_based(result: dict) -> dict:
    """A result JSON with 0-based layers: as it is where it says so, else a copy with every layer one less (the
    provenance left as it was) that says `layers_are` "0-based"."""
    if not written_one_based(result):
        return result
    return {**_shift(result, -1), "layers_are": LAYERS_ARE}


def _shift(value, by: int, layers: bool = False):
    """A copy of value with every layer number moved by `by`; `layers`: value is held by one of LAYER_KEYS."""
    if isinstance(value, dict):
        keyed = layers and all(k.isdigit() for k in value)  # {layer: ...}, as the scale test writes its layers
        return {(str(int(k) + by) if keyed else k): v if k == "provenance" else _shift(v, by, k in LAYER_KEYS)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_shift(v, by, layers) for v in value]
    if layers and isinstance(value, int) and not isinstance(value, bool):
        return value + by
    return value
