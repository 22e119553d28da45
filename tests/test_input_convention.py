"""Inputs as the model is used: the special tokens the tokenizer adds (a BOS) in prompts, calibration and evaluation
windows, perplexity over the same targets with and without them, the record in every result JSON (lib/data.py,
lib/perplexity.py, lib/cli.py, lib/evaluation.py, lib/check.py); and float overflow (lib/finite.py)."""
import json
import math

import pytest
import torch
from tokenizers import processors

import consequences
import planted
from lib import bos_effect, check, cli, data, finite
from lib.errors import UserError
from lib.perplexity import eval_windows, hf_logits, perplexity
from lib.text_numbers import sig
from monkey_patch import ModelView
from test_data import _tiny_hf_tokenizer

TEXT = "\n\n".join(f"Document {i}. " + "Summer is warm. Winter is cold.\n" * 5 for i in range(20))
FIGURES = ["existence_activation_outliers_layer", "pos_activation_outliers_layer", "pos_weight_outliers"]


def bos_tokenizer():
    """A byte-level BPE tokenizer whose post-processor prepends <bos> to every text, as Gemma's and LLaMA's do."""
    tokenizer = _tiny_hf_tokenizer(262)
    tokenizer.add_special_tokens({"bos_token": "<bos>"})
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tokenizer.bos_token_id)])
    return tokenizer


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYSTEMATIC_OUTLIERS_CACHE", str(tmp_path / "cache"))


def aligned(rows: torch.Tensor, stream: torch.Tensor) -> bool:
    """Every row is one of the consecutive non-overlapping chunks of `stream` of its length."""
    length = rows.shape[1]
    chunks = stream[:stream.numel() // length * length].view(-1, length)
    return all(bool((chunks == row).all(dim=1).any()) for row in rows)


# --- the convention: what a tokenizer adds -----------------------------------------------------------------------

def test_the_tokenizers_own_special_tokens_are_found_and_recorded():
    bos = bos_tokenizer()
    found = data.special_tokens(bos)
    assert found.prefix == (bos.bos_token_id,) == tuple(bos("Winter")["input_ids"][:1]) and found.suffix == ()
    assert found.record()["prepended"] == [{"token": "<bos>", "id": bos.bos_token_id}]
    off = data.special_tokens(bos, enabled=False)  # --no-bos: nothing prepended, and the record says what would be
    assert off.prefix == () and off.record()["prepended"] == []
    assert off.record()["tokenizer_prepends"] == [{"token": "<bos>", "id": bos.bos_token_id}]
    assert "--no-bos" in off.record()["text"]
    plain = data.special_tokens(_tiny_hf_tokenizer(262))
    assert plain.prefix == () and plain.record()["prepended"] == [] and "adds none" in plain.record()["text"]
    assert data.special_tokens(planted.CharTokenizer()).prefix == ()  # not a Hugging Face tokenizer: nothing


def test_a_bos_tokenizer_gets_it_in_every_calibration_and_evaluation_window(text_file):
    bos = bos_tokenizer()
    prefix = data.special_tokens(bos).prefix
    stream = data.get_eval_tokens(bos, str(text_file))[0]
    assert bos.bos_token_id not in stream.tolist()  # the text stream itself has no special token
    for windows in (data.get_data(bos, 6, 16, source=str(text_file), prefix=prefix),
                    eval_windows(stream, 16, 5, prefix=prefix)):
        assert windows.shape[1] == 16 and (windows[:, 0] == bos.bos_token_id).all()
        assert not (windows[:, 1:] == bos.bos_token_id).any()
        assert aligned(windows[:, 1:], stream)  # 15 text tokens after the BOS, cut from the stream


def test_a_tokenizer_that_adds_nothing_gets_nothing(text_file):
    """Windows and prompts of a tokenizer without special tokens are what they were before the convention: aligned
    chunks of the stream, and the prompt's plain tokens."""
    plain = _tiny_hf_tokenizer(262)
    prefix = data.special_tokens(plain).prefix
    stream = data.get_eval_tokens(plain, str(text_file))[0]
    windows = data.get_data(plain, 6, 16, source=str(text_file), prefix=prefix)
    assert torch.equal(windows, data.get_data(plain, 6, 16, source=str(text_file))) and aligned(windows, stream)
    assert torch.equal(eval_windows(stream, 16, 5, prefix=prefix), eval_windows(stream, 16, 5))
    assert cli.encode(plain, "Summer is warm.") == plain("Summer is warm.", add_special_tokens=False)["input_ids"]


def test_a_window_too_short_for_its_prefix_is_a_user_error(text_file):
    bos = bos_tokenizer()
    with pytest.raises(UserError, match="no room for text"):
        data.get_data(bos, 1, 1, source=str(text_file), prefix=data.special_tokens(bos).prefix)
    with pytest.raises(UserError, match="--seqlen must be at least 3"):
        eval_windows(torch.arange(100), 2, prefix=(0,))


# --- perplexity: the same targets with and without the BOS --------------------------------------------------------

def test_perplexity_with_and_without_the_bos_scores_the_same_targets_by_hand():
    model = planted.random_llama(vocab_size=300)
    windows = torch.randint(0, 262, (3, 12), generator=torch.Generator().manual_seed(0))
    windows[:, 0] = 262  # the BOS
    with torch.no_grad():
        with_bos = torch.log_softmax(model(windows[:, :-1]).logits.double(), -1)
        without = torch.log_softmax(model(windows[:, 1:-1]).logits.double(), -1)
    # targets: windows[:, 2:], predicted at positions 1.. with the BOS and 0.. without it
    by_hand = {"with": [-sum(with_bos[b, t - 1, windows[b, t]].item() for t in range(2, 12)) / 10 for b in range(3)],
               "without": [-sum(without[b, t - 2, windows[b, t]].item() for t in range(2, 12)) / 10 for b in range(3)]}
    measured = {"with": perplexity(hf_logits(model), windows, prefix=1),
                "without": perplexity(hf_logits(model), windows[:, 1:])}
    for key, result in measured.items():
        assert result["tokens"] == 30 and result["window_nll"] == pytest.approx(by_hand[key], rel=1e-5)
        assert result["ppl"] == pytest.approx(math.exp(sum(by_hand[key]) / 3), rel=1e-5)
    assert measured["with"]["ppl"] != pytest.approx(measured["without"]["ppl"], rel=1e-3)  # the BOS changes them


def test_consequences_measure_the_bos_removed_over_the_same_targets(tmp_path):
    model = planted.planted_llama()
    ids = torch.tensor([planted.CharTokenizer().encode(("Summer is warm. W Winter is cold. W " * 3)[:96])])
    bos = ord("@")  # a token of its own at the start of every window
    windows = torch.cat([torch.full((3, 1), bos), ids[:, :47].repeat(3, 1)], dim=1)
    windows[1, 5], windows[2, 9] = ord("x"), ord("y")  # three different windows
    calib = torch.cat([torch.full((2, 1), bos), ids[:, 47:94].repeat(2, 1)], dim=1)
    record = {"special_tokens": True, "prepended": [{"token": "@", "id": bos}], "text": "test"}
    subject = consequences.Subject("planted", "Planted Llama", model, ModelView(model).layers, hf_logits(model),
                                   lambda x: model.model(input_ids=x), windows, calib,
                                   {"source": "test", "split": "eval", "seqlen": 48, "windows": 3, "calib_windows": 2,
                                    "calib_split": "calib", "input": record}, prefix=1,
                                   token_text=planted.CharTokenizer().convert_ids_to_tokens)
    args = consequences.parser().parse_args(["--savedir", str(tmp_path), "--calib-samples", "2", "--methods",
                                             "--interventions"])
    result = consequences.run(args, [subject], command="python consequences.py (test)")["results"][0]
    base, removed = result["baseline"], result["bos_removed"]
    assert base["tokens"] == removed["tokens"] == 3 * 46 and removed["removed"] == record["prepended"]
    with torch.no_grad():
        full = torch.log_softmax(model(windows[:, :-1]).logits.double(), -1)
        cut = torch.log_softmax(model(windows[:, 1:-1]).logits.double(), -1)
    nll = {"with": [-full[b, torch.arange(1, 47), windows[b, 2:]].mean().item() for b in range(3)],
           "without": [-cut[b, torch.arange(0, 46), windows[b, 2:]].mean().item() for b in range(3)]}
    assert base["nll"] == pytest.approx(sum(nll["with"]) / 3, rel=1e-5)
    assert removed["nll"] == pytest.approx(sum(nll["without"]) / 3, rel=1e-5)
    diffs = [a - b for a, b in zip(nll["without"], nll["with"])]
    mean = sum(diffs) / 3
    stderr = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2 / 3)
    assert removed["nll_change"] == pytest.approx(mean, abs=1e-5 * base["nll"])  # float32 logits: within their noise
    assert removed["nll_change_stderr"] == pytest.approx(stderr, abs=1e-5 * base["nll"])
    # the sink character keeps the massive activation; positions are counted in the full windows
    sink = windows[0].tolist().index(ord(planted.SINK), 1)
    assert removed["where"]["massive"]["tokens"][0] == base["where"]["massive"]["tokens"][0] == sink
    assert removed["token_text"]["with"]["massive"][0] == removed["token_text"]["without"]["massive"][0] == planted.SINK
    assert len(removed["per_window"]["massive_abs"]["with"]) == 3 and result["data"]["input"] == record
    # the table of what the missing BOS changes (lib/bos_effect.py), from the same result
    found = bos_effect.table(result)
    rows = {r["quantity"]: r for r in found["rows"]}
    ppl = rows[f"perplexity over the same {3 * 46} targets"]
    assert (ppl["with"], ppl["without"]) == (sig(base["ppl"], 4), sig(removed["ppl"], 4))
    assert ppl["change"] == f"{removed['nll_change']:+.3g} ± {removed['nll_change_stderr']:.2g} nats"
    assert rows["massive activation: token"]["with"] == f"'{planted.SINK}' (position {sink}) in 3 of 3 windows"
    assert rows["massive activation: token"]["change"] == "moved in 0 of 3 windows"
    change = [b - a for a, b in zip(*removed["per_window"]["massive_abs"].values())]
    assert rows["massive activation: |h| (median over windows)"]["change"].startswith(f"{sum(change) / 3:+.3g} ± ")
    assert bos_effect.markdown("Planted", found)[0] == "| Planted | with `@` | without (`--no-bos`) | change |"
    assert bos_effect.table({**result, "bos_removed": None}) is None


# --- prompts and windows in the figures, and the JSON record -------------------------------------------------------

def _figures(tmp_path, tokenizer, *extra, model=None):
    args = cli.parser().parse_args(["--savedir", str(tmp_path / "out"), "--data", str(tmp_path / "corpus.txt"),
                                    "--nsamples", "2", "--seqlen", "24", *extra])
    model = model or planted.random_llama(vocab_size=300)
    seen = []  # every input of every forward
    handle = model.model.embed_tokens.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    try:
        cli.run(FIGURES, args, model=model, tokenizer=tokenizer, spec=planted.spec("tiny", "Tiny"))
    finally:
        handle.remove()
    return {name: json.loads((tmp_path / "out" / "tiny" / f"{name}.json").read_text()) for name in FIGURES}, seen


def test_figures_feed_the_bos_to_every_forward_and_record_it(tmp_path, text_file):
    bos = bos_tokenizer()
    results, seen = _figures(tmp_path, bos)
    assert seen and all((ids[:, 0] == bos.bos_token_id).all() for ids in seen)  # the prompt and every window
    assert results["existence_activation_outliers_layer"]["tokens"][0] == "<bos>"
    for name, result in results.items():
        assert result["input"]["prepended"] == [{"token": "<bos>", "id": bos.bos_token_id}], name
        assert result["provenance"]["data"]["input"] == result["input"]
    assert results["pos_activation_outliers_layer"]["calibration"]["prepended"] == results["pos_weight_outliers"][
        "input"]["prepended"]

    other = tmp_path / "no_bos"
    other.mkdir()
    (other / "corpus.txt").write_text(TEXT)
    results, seen = _figures(other, bos, "--no-bos")
    assert seen and not any((ids == bos.bos_token_id).any() for ids in seen)
    assert results["existence_activation_outliers_layer"]["tokens"][0] != "<bos>"
    assert all(r["input"]["prepended"] == [] and r["input"]["tokenizer_prepends"] for r in results.values())


def test_the_re_check_says_in_one_line_when_the_inputs_differ():
    bos = {"input": data.special_tokens(bos_tokenizer()).record()}
    legacy = {"results": [{"data": {"source": "gutenberg"}}]}  # made before the record: nothing prepended
    none = {"results": [{"data": {"input": data.special_tokens(_tiny_hf_tokenizer(262)).record()}}]}
    note = check.input_note("results/x", legacy, bos)
    assert note.startswith("note: results/x was made with no special tokens") and "'<bos>'" in note
    assert "\n" not in note and check.input_note("results/x", legacy, none) is None
    assert check.input_note("results/x", bos, bos) is None
    assert check.differences({"input": bos["input"], "x": 1}, {"input": {}, "x": 1}) == []


# --- float overflow ------------------------------------------------------------------------------------------------

def test_headroom_is_the_largest_activation_against_each_dtype(tmp_path, text_file):
    model = planted.planted_llama()
    results, _ = _figures(tmp_path, planted.CharTokenizer(), model=model)
    ids = torch.tensor([planted.CharTokenizer().encode(cli.SUMMER)])
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[1:]  # every layer's output
    largest = max(float(h.abs().max()) for h in hidden[:-1])  # HF's last entry is after the final norm
    largest = max(largest, float(_last_layer_output(model, ids).abs().max()))
    room = results["existence_activation_outliers_layer"]["headroom"]
    assert room["inputs"] == ["prompt"] and room["largest_abs"] == pytest.approx(largest, rel=1e-5)
    assert room["largest_finite"] == {"float16": 65504.0, "bfloat16": pytest.approx(3.3895e38, rel=1e-4),
                                      "float32": pytest.approx(3.4028e38, rel=1e-4)}
    assert room["fits"]["float16"] == (largest <= 65504) and room["run_dtype"] == "float32"
    assert (room["layer"], room["token"], room["channel"]) == (planted.PLANTED, cli.SUMMER.index(planted.SINK),
                                                              planted.CHANNEL)
    calibration = results["pos_activation_outliers_layer"]["headroom"]
    assert calibration["inputs"] == ["calibration 2 x 24"] and "headroom" not in results["pos_weight_outliers"]


def _last_layer_output(model, ids):
    seen = {}
    handle = model.model.layers[-1].register_forward_hook(lambda m, a, out: seen.setdefault("h", out[0] if
                                                                                               isinstance(out, tuple)
                                                                                               else out))
    with torch.no_grad():
        model(ids)
    handle.remove()
    return seen["h"]


def test_a_float16_overflow_stops_the_figures_with_one_line_and_writes_nothing(tmp_path, text_file):
    """A planted activation of about 1e5 is finite in float32 and inf in float16 (CPU runs float16 too)."""
    model = planted.planted_llama(write=200.0)
    ids = torch.tensor([planted.CharTokenizer().encode(cli.SUMMER)])
    with torch.no_grad():
        exact = model(ids, output_hidden_states=True).hidden_states[planted.PLANTED + 1]  # layer PLANTED's output
    assert exact.abs().max() > 65504 and torch.isfinite(exact).all()
    with pytest.raises(UserError) as raised:
        _figures(tmp_path, planted.CharTokenizer(), "--dtype", "float16", model=model.half())
    message = str(raised.value)
    token = cli.SUMMER.index(planted.SINK)
    assert "\n" not in message
    assert message.startswith(f"layer {planted.PLANTED}'s output is inf at token {token} ('{planted.SINK}'), "
                              f"channel {planted.CHANNEL}: it overflowed float16 (largest finite value 65,504)")
    assert "bfloat16 and float32 hold values" in message and "--dtype bfloat16" in message
    assert not list((tmp_path / "out").rglob("*.json")) and not list((tmp_path / "out").rglob("*.png"))


def test_a_float16_overflow_stops_consequences_too(tmp_path):
    model = planted.planted_llama(write=200.0).half()
    ids = torch.tensor([planted.CharTokenizer().encode(("Summer is warm. W Winter is cold. W " * 3)[:96])])
    subject = consequences.Subject("planted", "Planted Llama", model, ModelView(model).layers, hf_logits(model),
                                   lambda x: model.model(input_ids=x), ids[:, :48], ids[:, 48:],
                                   {"source": "test", "split": "eval", "seqlen": 48, "windows": 1,
                                    "calib_windows": 1, "calib_split": "calib"})
    args = consequences.parser().parse_args(["--savedir", str(tmp_path / "res"), "--methods", "--interventions"])
    with pytest.raises(UserError, match=f"layer {planted.PLANTED}'s output is inf at token 16, channel "
                                        f"{planted.CHANNEL}: it overflowed float16"):
        consequences.run(args, [subject], command="python consequences.py (test)")
    assert not (tmp_path / "res").exists()


def test_the_dtypes_that_would_hold_an_overflow():
    assert finite.wider(torch.float16) == [torch.bfloat16, torch.float32] and finite.wider(torch.float32) == []
    logits = torch.zeros(1, 3, 5)
    logits[0, 2, 4] = float("nan")
    with pytest.raises(UserError, match="the logits are nan at token 2, vocabulary entry 4, in float32"):
        finite.Guard().logits(logits)


def test_fixed_channels_counts_the_prompts_largest_outlier_where_a_smaller_one_comes_first():
    """Gemma 3 with its <bos>: channel 400 is the prompt's first outlier (layer 0), channel 163 its largest, and
    every calibration window's largest outlier sits in 163: the channels are fixed."""
    from lib import cross_model
    windows = [{"category": "initial_token", "token": "<bos>", "channel": 163}] * 4
    d = {"num_layers": 18, "windows": windows, "categories": {"initial_token": 1.0, "count": 4}, "weights": {},
         "attention": {"tokens": ["<bos>"]}, "consequences": None, "layer_rows": [], "top1_over_median": [],
         "row": {"prompt_outlier_channels": [400], "dominant_outlier": {"channel": 163}}}
    verdict, numbers = next((v, x) for p, v, x in cross_model.properties(d) if p == "fixed channels")
    assert verdict == "holds" and numbers.endswith("prompt outlier channel(s) 400, its largest outlier in channel 163")
    d["row"]["dominant_outlier"] = {"channel": 400}
    assert next(v for p, v, _ in cross_model.properties(d) if p == "fixed channels") == "does not hold"


def test_removal_is_judged_on_the_prompts_largest_outlier_where_the_lifecycle_follows_a_smaller_first_one():
    """The lifecycle figures follow the first outlier (channel 400, shrunk most at layer 8 of layers 0-17); the massive
    one (channel 163) peaks at layer 14 and shrinks most at layer 16: that is the one the paper's property is about."""
    from lib import cross_model
    trace = [9, 113, 91, 10428, 24708, 41944, 54685, 68398, 82828, 88093, 90790, 98538, 99535, 102014, 103795, 101000,
             82725, 66095]
    dominant = {"channel": 163, "flagged_layers": list(range(3, 15)),
                "per_layer": [{"layer": i, "abs": float(v)} for i, v in enumerate(trace)]}
    windows = [{"category": "initial_token", "token": "<bos>", "channel": 163}] * 4
    d = {"num_layers": 18, "windows": windows, "categories": {"initial_token": 1.0, "count": 4}, "weights": {},
         "attention": {"tokens": ["<bos>"], "dominant_outlier": dominant}, "consequences": None, "layer_rows": [],
         "top1_over_median": [], "disappearance": {"channel": 400},
         "row": {"prompt_outlier_channels": [400], "dominant_outlier": dominant, "disappearance_layer": 8}}
    verdict, numbers = next((v, x) for p, v, x in cross_model.properties(d) if p == "removed in the last layers")
    assert verdict == "holds" and numbers == ("the layer that shrinks the prompt's largest outlier (channel 163) most: "
                                              "layer 16 of layers 0-17 (0.94 of the depth); the rule flags it up to "
                                              "layer 14; its first outlier (channel 400): layer 8")
    d["disappearance"] = {"channel": 163}  # the figures follow the massive one itself: their layer decides
    assert next(v for p, v, _ in cross_model.properties(d) if p == "removed in the last layers") == "does not hold"
