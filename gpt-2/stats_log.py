"""The layer numbering of the training logs: stats.jsonl lines and final.json, read 0-based whatever wrote them.

Blocks are 0-based, as everywhere in the project (lib/layer_numbering.py): block i is model.transformer.h[i], and
a writer "mlp2" is the MLP of block 2. train.py records `"layers_are": "0-based"` in every stats.jsonl line and in
final.json. A line or file without `layers_are` was written when blocks counted from 1 (the committed study logs
under results/, and any run trained by code of that time): `as_zero_based` converts it on reading. The block
numbers sit in these places:
  - `layer` (any depth: report layers and positions, judged rows, verdict rows, ablation rows, largest_peak);
  - the first entry of each `sink_heads` [block, head, share] and `outlier_positions` [block, position];
  - `outlier_layers` (lines logged before the per-position verdict);
  - the writer names "attn<block>" / "mlp<block>": `writer`, the keys of `contributions`, and the sentences that
    name a writer (`why_not`, `why`).
The provenance block is left as it was.
"""
import re

LAYERS_ARE = "0-based"
WRITER = re.compile(r"\b(attn|mlp)(\d+)\b")
PAIRS = ("sink_heads", "outlier_positions")  # lists of [block, ...]
KEPT = ("provenance",)


def is_one_based(record: dict) -> bool:
    """Whether a stats.jsonl line or a final.json was written when blocks counted from 1 (no `layers_are`)."""
    return "layers_are" not in record


def as_zero_based(record: dict) -> dict:
    """A stats.jsonl line or final.json with 0-based blocks: as it is where it says `layers_are`, else a converted
    copy (every block number one less) that says "0-based"."""
    if not is_one_based(record):
        return record
    return {**shift_blocks(record, -1), "layers_are": LAYERS_ARE}


def as_stored(fresh: dict, stored: dict) -> dict:
    """A record the code writes now (`fresh`, 0-based) in the numbering of `stored`, the record it is compared with:
    for a record of the older format, blocks counted from 1 and no `layers_are`."""
    if not is_one_based(stored):
        return fresh
    return {key: value for key, value in shift_blocks(fresh, +1).items() if key != "layers_are"}


def shift_blocks(value, by: int):
    """A copy of `value` (a log record or any part of one) with every block number moved by `by`."""
    if isinstance(value, dict):
        return {_writer(key, by): value[key] if key in KEPT else _field(key, item, by) for key, item in value.items()}
    if isinstance(value, list):
        return [shift_blocks(item, by) for item in value]
    if isinstance(value, str):
        return _writer(value, by)
    return value


def _field(key: str, value, by: int):
    if key == "layer" and isinstance(value, int):
        return value + by
    if key == "outlier_layers":
        return [block + by for block in value]
    if key in PAIRS:
        return [[pair[0] + by, *shift_blocks(pair[1:], by)] for pair in value]
    return shift_blocks(value, by)


def _writer(text, by: int):
    """Writer names in `text` ("mlp3", "written by attn2, not an MLP") with their block moved by `by`."""
    if not isinstance(text, str):
        return text
    return WRITER.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + by}", text)
