"""gpt-2/stats_log.py: training logs read 0-based whatever code wrote them, a line or file of the older 1-based
format (no `layers_are`) converted on reading."""
import json
import os
import sys

GPT2 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gpt-2")
sys.path.insert(0, GPT2)
from stats_log import as_stored, as_zero_based, shift_blocks  # noqa: E402

OLD_LINE = {  # a per-position stats.jsonl line of 2 blocks as code of that time wrote it: blocks 1 and 2
    "iter": 2000, "layers": [{"top1_ratio_mean": 150.0, "position": 0}, {"top1_ratio_mean": 20.0, "position": 3}],
    "judged": [{"layer": 1, "position": 0, "writer": "mlp1", "sink_heads": [[2, 1, 0.9]],
                "why_not": []},
               {"layer": 2, "position": 3, "writer": "attn2", "sink_heads": [],
                "why_not": ["written by attn2, not an MLP", "last block: no later block to read it"]}],
    "outliers": True, "outlier_positions": [[1, 0]], "max_over_layers": 150.0}
OLDER_LINE = {"iter": 0, "layers": [{"ratio": 5.9, "writer": "mlp1"}, {"ratio": 112.3, "writer": "mlp2"}],
              "outliers": True, "outlier_layers": [2], "max_over_layers": 112.3}


def test_a_line_of_the_older_format_is_converted_on_reading():
    line = as_zero_based(OLD_LINE)
    assert line["layers_are"] == "0-based" and line["iter"] == 2000 and line["layers"] == OLD_LINE["layers"]
    first, second = line["judged"]
    assert (first["layer"], first["writer"], first["sink_heads"]) == (0, "mlp0", [[1, 1, 0.9]])
    assert (second["layer"], second["writer"]) == (1, "attn1")
    assert second["why_not"] == ["written by attn1, not an MLP", "last block: no later block to read it"]
    assert line["outlier_positions"] == [[0, 0]]
    older = as_zero_based(OLDER_LINE)
    assert older["outlier_layers"] == [1] and [l["writer"] for l in older["layers"]] == ["mlp0", "mlp1"]
    assert OLD_LINE["judged"][0]["layer"] == 1  # the record read is left as it was


def test_a_line_that_says_0_based_is_read_as_it_is():
    new = json.loads(json.dumps(shift_blocks(OLD_LINE, -1)))
    new["layers_are"] = "0-based"
    assert as_zero_based(new) is new
    assert as_zero_based(new) == as_zero_based(OLD_LINE)


def test_a_final_json_of_the_older_format_round_trips_for_the_check():
    stored = {"iter": 100, "losses": {"val": 1.0},
              "report": {"layers": [{"layer": 1, "positions": [{"layer": 1, "writer": "mlp1",
                                                                "contributions": {"embed": 0.1, "attn1": 0.2, "mlp1": 5.0},
                                                                "sink_heads": [[2, 0, 0.8]], "head_shares": [[0.1], [0.8]]}]},
                                    {"layer": 2, "positions": []}],
                         "verdict": {"found": [{"layer": 1, "writer": "mlp1", "sink_heads": [[2, 0, 0.8]]}],
                                     "rejected": [], "attention_written": []}},
              "ablation": [{"layer": 1, "position": 0}], "largest_peak": {"layer": 1, "position": 0},
              "provenance": {"command": "python train.py --out_dir=out-mlp2"}}
    read = as_zero_based(stored)
    position = read["report"]["layers"][0]["positions"][0]
    assert position["contributions"] == {"embed": 0.1, "attn0": 0.2, "mlp0": 5.0} and position["writer"] == "mlp0"
    assert position["head_shares"] == [[0.1], [0.8]] and position["sink_heads"] == [[1, 0, 0.8]]
    assert (read["ablation"][0]["layer"], read["largest_peak"]["layer"], read["report"]["layers"][1]["layer"]) == (0, 0, 1)
    assert read["provenance"] == stored["provenance"]  # left as it was
    assert as_stored(read, stored) == stored  # what the code writes now, compared in the stored file's numbering
    assert as_stored(read, read) is read


def test_an_analysis_json_of_the_older_numbering_is_refused(tmp_path):
    import pytest

    import plot_gpt2
    from lib.errors import UserError
    record = {key: [] for key in plot_gpt2.ANALYSIS_KEYS}
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps({**record, "checkpoint": {}}))
    with pytest.raises(UserError, match="counts layers from 1 .*: run analyze.py on its checkpoint again"):
        plot_gpt2.read_analysis(str(path))
    path.write_text(json.dumps({**record, "checkpoint": {}, "layers_are": "0-based"}))
    assert plot_gpt2.read_analysis(str(path))["layers_are"] == "0-based"
