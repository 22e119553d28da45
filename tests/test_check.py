"""The re-check's comparison (lib/check.py, lib/text_numbers.py): sentences compared by their words and numbers."""
import random

from lib.check import RTOL, differences
from lib.text_numbers import NUMBER, sig

SENTENCE = ("dominant outlier of the prompt: token 3 ('.'), channel 163, |h| {abs} at layer 11 (1189.2 x the median "
            "|h|); the rule flags it at layers 8-11; from layer 12 on it fails: it is only {ratio} x the layer's "
            "median |h| (< 1000: the median grows from 29.7 to 54.1)")


def one(old, new):
    return differences({"text": old}, {"text": new})


def test_numbers_across_a_rounding_boundary_compare_equal():
    assert one(SENTENCE.format(abs="3.531e+04", ratio="897.5"), SENTENCE.format(abs="3.532e+04", ratio="897.6")) == []
    assert one("share 0.61 of the heads", "share 0.62 of the heads") == []  # one unit of the last printed digit
    assert one("a change of 27%", "a change of 28%") == []
    assert one("costs +0.104 ± 0.050 nats", "costs +0.1041 ± 0.05 nats") == []


def test_a_changed_word_integer_or_value_is_a_difference():
    base = SENTENCE.format(abs="3.531e+04", ratio="897.5")
    changed = [base.replace("fails", "passes"),
               base.replace("layer 12", "layer 13"),            # a layer
               base.replace("channel 163", "channel 164"),      # a channel
               base.replace("token 3 ", "token 4 "),            # a token
               base.replace("layers 8-11", "layers 8-10"),
               base.replace("897.5", "899.0"),                  # 1.7e-3 away: outside the tolerance
               base.replace("3.531e+04", "3.541e+04"),
               base.replace("897.5", "897"),                    # a measured value is never an integer
               base.replace("1000:", "1000: about")]
    for new in changed:
        found = one(base, new)
        assert len(found) == 1 and found[0].startswith("/text:"), new
    assert one("share 0.61 of the heads", "share 0.63 of the heads") != []
    assert one("in 4 of 4 windows", "in 3 of 4 windows") != []
    assert one("columns [267, 400, 82]", "columns [267, 400]") != []


def test_sig_never_writes_a_measured_value_as_an_integer():
    assert sig(1619.37) == "1619.4" and sig(897.548) == "897.5" and sig(35309.1) == "3.531e+04"
    assert sig(3.0) == "3.0" and sig(335.4, 3) == "335.4" and sig(0.1504) == "0.1504"
    assert sig(7) == "7" and sig(-2.5e-7) == "-2.5e-07"
    rng = random.Random(0)
    for _ in range(2000):
        x = 10 ** rng.uniform(-4, 6) * rng.choice([1, -1])
        for digits in (3, 4):
            written = sig(x, digits)
            assert NUMBER.fullmatch(written) and any(c in written for c in ".e"), written
            # the same value a hair away (another reduction order) reads as the same number
            assert one(f"is {written} x", f"is {sig(x * (1 + RTOL / 4), digits)} x") == [], (x, digits)


def test_a_result_measured_over_runs_is_compared_within_its_own_band():
    old = {"w8a8": {"ppl": 145.5, "nll": 4.980, "runs": [145.5, 150.4, 142.3, 146.5, 144.0],
                    "reproducible_within": {"atol": 0.112, "rtol": 0.119}}, "w8_channel": {"ppl": 116.7}}
    inside = {"w8a8": {**old["w8a8"], "ppl": 150.0, "nll": 5.01, "runs": [150.0, 139.0, 151.0, 148.0, 152.0]},
              "w8_channel": {"ppl": 116.7}}
    assert differences(old, inside) == []           # single runs are not compared, the median within the band
    outside = {"w8a8": {**old["w8a8"], "ppl": 170.0, "nll": 5.14}, "w8_channel": {"ppl": 117.0}}
    assert differences(old, outside) == ["/w8_channel/ppl: 116.7 -> 117", "/w8a8/ppl: 145.5 -> 170"]  # its own band


def test_the_command_and_times_are_not_compared():
    old = {"command": "python consequences.py --savedir results/x", "seconds": 12.0, "ppl": 3.5}
    new = {"command": "python consequences.py --savedir /tmp/re-run", "seconds": 30.0, "ppl": 3.5}
    assert differences(old, new) == []
    assert differences(old, {**new, "ppl": 3.6}) == ["/ppl: 3.5 -> 3.6"]


def test_a_folder_written_with_1_based_layers_is_said_so_in_one_line(tmp_path):
    """A figure JSON saying "1-based", or a consequences.json saying nothing (results written before layers were
    0-based), is not re-run: one line says why, and the check fails."""
    import json

    from lib import check
    provenance = {"command": "python no_such_script.py --savedir x", "project": {}}
    for name, result in (("existence_weight_outliers.json", {"layers_are": "1-based", "layer": 3}),
                         ("consequences.json", {"results": []})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / name).write_text(json.dumps({**result, "provenance": provenance}))
        lines = []
        assert check.main(folder, log=lines.append) == 1
        assert len(lines) == 1 and "was written with 1-based layers" in lines[0] and name in lines[0], lines
        assert "regenerate it with its command" in lines[0]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "r.json").write_text(json.dumps({"layers_are": "0-based", "provenance": provenance}))
    assert check.numbering_note(fresh, check.result_files(fresh)) is None
