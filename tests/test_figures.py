"""The figure scripts end to end: on a random tiny model, on a tiny model with planted outliers (the
JSON must name what was planted), on the real default model (slow), and with bad input."""
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.colors
import matplotlib.lines
import matplotlib.patches
import pytest
import torch

import planted
from lib import cli
from lib.errors import UserError
from lib.tiny_models import FAMILY_CONFIGS, tiny_model
from lib.paper_figures import FIGURES

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Summer is warm. Winter is cold.\n"
SINK_POSITION = PROMPT.index(planted.SINK)  # the character tokenizer makes positions character offsets
# Every 64-character window of this text holds the sink character at least once.
CALIBRATION_TEXT = "Summer is warm. Winter is cold. The sun is high, and we walk on.\n" * 80


def _args(tmp_path, *extra):
    data = tmp_path / "calibration.txt"
    data.write_text(CALIBRATION_TEXT)
    return cli.parser().parse_args(["--savedir", str(tmp_path / "out"), "--data", str(data),
                                    "--nsamples", "3", "--seqlen", "64", *extra])


def _run_all(tmp_path, model, name, *extra):
    args = _args(tmp_path, *extra)
    results = cli.run(list(FIGURES), args, model=model, tokenizer=planted.CharTokenizer(),
                      spec=planted.spec(name, name.capitalize()))
    outdir = tmp_path / "out" / name
    return results, outdir


def _load(outdir, name):
    return json.loads((outdir / f"{name}.json").read_text())


TITLES = {}  # file stem -> (figure title, panel titles) of the planted run's figures
FIGS = {}  # file stem -> the planted run's matplotlib figure, to check what it draws


def _recording_save(save):
    def record(fig, base, formats):
        suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
        TITLES[base.name] = (suptitle, [ax.get_title() for ax in fig.axes])
        FIGS[base.name] = fig
        return save(fig, base, formats)
    return record


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli.plotting, "save", _recording_save(cli.plotting.save))
        return _run_all(tmp, planted.planted_llama(), "planted")


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("random")
    return _run_all(tmp, planted.random_llama(), "random")


def _layer_io(model, layer, ids):
    """HF's own tensors of a layer on ids, from forward hooks: the layer's input and output, and its
    down_proj's input."""
    seen = {}

    def keep(name, pick):
        def hook(module, *io):
            seen[name] = pick(*io)
        return hook
    first = lambda x: x[0] if isinstance(x, tuple) else x  # noqa: E731
    block = model.model.layers[layer]
    hooks = [block.register_forward_pre_hook(keep("in", lambda args, kwargs: args[0] if args else
                                                  kwargs["hidden_states"]), with_kwargs=True),
             block.register_forward_hook(keep("out", lambda args, out: first(out))),
             block.mlp.down_proj.register_forward_pre_hook(keep("down_in", lambda args: args[0]))]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return {k: v[0] for k, v in seen.items()}


def test_every_script_writes_json_and_figures(random_run, planted_run):
    """Every script writes its JSON and non-blank images, and the prompt figures' peaks are those of Hugging Face's
    own layer output and down_proj input, on the random model and the planted one."""
    import matplotlib.image
    ids = torch.tensor([planted.CharTokenizer().encode(PROMPT)])
    for (results, outdir), model in ((random_run, planted.random_llama()), (planted_run, planted.planted_llama())):
        for name in FIGURES:
            data = _load(outdir, name)
            assert data["script"] == name and data["summary"]
            assert data["files"], name
            for file in data["files"]:
                pixels = matplotlib.image.imread(outdir / file)
                assert pixels.ndim == 3 and pixels.std() > 0.01, file
        for name, point in (("existence_activation_outliers_layer", "out"), ("existence_activation_outliers_down",
                                                                           "down_in")):
            data = _load(outdir, name)
            assert data["max"] == pytest.approx(_layer_io(model, data["layer"], ids)[point].abs().max().item(),
                                                rel=1e-5), (outdir.name, name)


def test_the_model_is_named_once_in_the_figure_title(planted_run):
    """Panel titles stay short, so long model names (gpt-2 checkpoints) cannot make them collide."""
    _, outdir = planted_run
    assert set(TITLES) == {Path(f).stem for name in FIGURES for f in _load(outdir, name)["files"]}
    for stem, (suptitle, panels) in TITLES.items():
        assert suptitle.startswith("Planted"), stem
        assert panels and not any("Planted" in title for title in panels), (stem, panels)


def _rgb(color) -> tuple:
    return tuple(round(c, 3) for c in matplotlib.colors.to_rgb(color))


def _drawn_colours(ax) -> set:
    """What an axes draws, as RGB: its lines and markers, scatter points, bars, bands and frames (not images)."""
    from matplotlib.collections import PathCollection
    colours = set()
    for line in ax.get_lines():
        colours |= {_rgb(line.get_color()), _rgb(line.get_markerfacecolor())}
    for collection in ax.collections:
        if isinstance(collection, PathCollection):
            colours |= {_rgb(c) for c in collection.get_facecolors()}
    for patch in ax.patches:
        colours.add(_rgb(patch.get_facecolor() if patch.get_fill() else patch.get_edgecolor()))
    return colours


def _legend_colours(fig) -> set:
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    colours = set()
    for legend in legends:
        for handle in legend.legend_handles:
            if isinstance(handle, matplotlib.patches.Patch):
                colours.add(_rgb(handle.get_facecolor() if handle.get_fill() else handle.get_edgecolor()))
            elif isinstance(handle, matplotlib.lines.Line2D):
                colours |= {_rgb(handle.get_color()), _rgb(handle.get_markerfacecolor())}
            else:
                colours |= {_rgb(c) for c in handle.get_facecolors()}
    return colours


def test_every_outlier_colour_and_band_is_in_a_legend(planted_run):
    """Magenta (the outliers), blue (the other tokens, channels, columns) and the shaded layer bands are each named
    by a legend entry of their figure; a band by the legend of its own panel."""
    marked = {_rgb(cli.plotting.OUTLIER), _rgb(cli.plotting.NORMAL)}
    for stem, fig in FIGS.items():
        drawn = set().union(*(_drawn_colours(ax) for ax in fig.axes)) & marked
        assert drawn and drawn <= _legend_colours(fig), (stem, drawn)
        for ax in fig.axes:
            bands = [p for p in ax.patches if p.get_alpha() == cli.plotting.BAND_ALPHA]
            if bands:
                named = {_rgb(h.get_facecolor()) for h in ax.get_legend().legend_handles
                         if isinstance(h, matplotlib.patches.Patch)}
                assert _rgb(cli.plotting.OUTLIER) in named, (stem, ax.get_title())


def test_the_outlier_token_is_boxed_wherever_its_label_appears_and_its_attention_column_framed(planted_run):
    """The planted sink character: its tick labels, and only its, are boxed (a one-character label stays visible);
    in the attention map the sink key's column, from its own query down, is framed."""
    for stem in ("existence_activation_outliers_layer", "existence_activation_outliers_down",
                 "existence_attention_outliers", "lifecycle_spread", "lifecycle_relocation"):
        labels = [label for ax in FIGS[stem].axes for label in ax.get_xticklabels() + ax.get_yticklabels()]
        boxed = {label.get_text() for label in labels if label.get_bbox_patch() is not None}
        assert boxed == {planted.SINK}, stem
    ax = FIGS["existence_attention_outliers"].axes[0]
    frames = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle) and not p.get_fill()]
    assert [(p.get_x() + 0.5, p.get_y() + 0.5, p.get_width(), p.get_height()) for p in frames] == \
        [(SINK_POSITION, SINK_POSITION, 1, len(PROMPT) - SINK_POSITION)]
    assert _rgb(frames[0].get_edgecolor()) == _rgb(cli.plotting.OUTLIER)


def test_layer_axes_have_integer_ticks_from_0(planted_run):
    """Every axis labelled "layer" in the planted run's figures has integer ticks and starts at layer 0, the first."""
    seen = 0
    for stem, fig in FIGS.items():
        for ax in fig.axes:
            for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
                if label != "layer":
                    continue
                low, high = sorted(axis.get_view_interval())
                ticks = [t for t in axis.get_ticklocs() if low <= t <= high]
                assert ticks and all(float(t).is_integer() for t in ticks), (stem, ax.get_title(), ticks)
                assert min(ticks) == 0, (stem, ax.get_title(), ticks)
                seen += 1
    assert seen >= 8  # the per-layer curves, scatters and bars, and the relocation maps


def test_every_figure_title_says_what_is_plotted_and_on_what_input(planted_run):
    """The prompt and its token count, the calibration text and its size, or that only the weights are read; in
    words, not in the notation only the paper's pages define."""
    tokens = len(planted.CharTokenizer().encode(PROMPT))
    prompt = PROMPT.replace("\n", "\\n")
    for stem, fig in FIGS.items():
        title = fig._suptitle.get_text().replace("\n", " ")
        figure = FIGURES[stem.removesuffix("_3d")]
        if stem.endswith("_3d"):
            assert "calibration sequence 0 of 3: 64 tokens of" in title, stem
        elif "prompt" in figure.flags:
            assert f'prompt "{prompt}": {tokens} tokens' in title, stem
        elif figure.calibration:
            assert "calibration text: 3 sequences x 64 tokens of" in title, stem
        else:
            assert "the weights alone" in title, stem
        assert title.startswith("Planted: "), stem  # what is plotted follows the model's name
        words = [title] + [ax.get_title() for ax in fig.axes]
        assert not any("T-1" in w or "h[" in w for w in words), (stem, words)


def test_a_title_line_never_breaks_inside_a_flag():
    """A figure 6.2 inches wide wraps the input line at 78 characters: where a hyphen may end a line, --no-bos splits
    into "--no-" and "bos"."""
    fig, _ = cli.plotting.figure(size=(6.2, 4.0))
    source = 'prompt "Summer is warm. Winter is cold.\\n": 9 tokens, without the <bos> (--no-bos)'
    cli.plotting.title(fig, "Model: what is plotted", source)
    lines = fig._suptitle.get_text().splitlines()
    cli.plotting.plt.close(fig)
    assert lines[-1].endswith("(--no-bos)") and not any(line.endswith("-") for line in lines), lines


def test_every_figure_is_registered_once_with_its_script():
    for name, figure in FIGURES.items():
        script = (ROOT / f"{name}.py").read_text()
        assert f'main("{name}")' in script and len(script.splitlines()) <= 6, name
        assert set(figure.flags) <= set(cli.FLAG_GROUPS), name
        assert (figure.calibration is not None) == ("calibration" in figure.flags), name
        assert figure.calibration in (None, *cli.CPU_DEFAULTS), name


def test_random_model_has_no_outliers(random_run):
    _, outdir = random_run
    # A random tiny model's activations stay far below the rule's absolute floor of 100.
    layer = _load(outdir, "existence_activation_outliers_layer")
    assert layer["max"] < 100 and layer["outlier_tokens"] == [] and not layer["outliers_found"]
    assert _load(outdir, "pos_activation_outliers_layer")["outlier_layers"] == []
    assert _load(outdir, "lifecycle_emergence")["outliers_found"] is False


def test_planted_activation_outliers_on_the_prompt(planted_run):
    _, outdir = planted_run
    layer = _load(outdir, "existence_activation_outliers_layer")
    assert layer["layer"] == planted.PLANTED
    assert layer["outlier_tokens"] == [SINK_POSITION]
    assert layer["outlier_channels"] == [planted.CHANNEL]
    assert layer["tokens"][SINK_POSITION] == planted.SINK
    # from the planted layer to the one before the last, which cancels it
    assert layer["outlier_layers"] == list(range(planted.PLANTED, planted.LAYERS - 1))
    down = _load(outdir, "existence_activation_outliers_down")
    assert down["layer"] == planted.PLANTED
    assert down["outlier_tokens"] == [SINK_POSITION] and down["outlier_channels"] == [planted.NEURON]
    # gate = up = 4 * sqrt(hidden) on the normalised trigger: silu(22.6) * 22.6 ~ 512 (x 0.99, attention noise)
    assert 450 < down["max"] < 520


def test_planted_weight_outliers(planted_run):
    _, outdir = planted_run
    weights = _load(outdir, "existence_weight_outliers")
    assert weights["layer"] == planted.PLANTED
    assert weights["top_column"] == planted.NEURON and weights["top_rows"][0] == planted.CHANNEL
    assert weights["writer"]["column"] == planted.NEURON and weights["writer"]["channel"] == planted.CHANNEL
    assert weights["writer"]["share_of_down_proj_output"] > 0.99
    rows = _load(outdir, "pos_weight_outliers")["layers"]
    planted_row = rows[planted.PLANTED]
    assert planted_row["layer"] == planted.PLANTED and planted_row["top_columns"][0] == planted.NEURON
    # one nonzero entry of 20 in a column of 32: max / mean = 20 / (20 / 32) = 32
    assert planted_row["max_ratio"] == pytest.approx(32.0, rel=1e-5)


def test_planted_attention_sink(planted_run):
    _, outdir = planted_run
    attention = _load(outdir, "existence_attention_outliers")
    assert attention["layer"] == planted.PLANTED + 1
    assert attention["outlier_keys"] == [SINK_POSITION]
    # the queries from the sink on put nearly all their mass on it: one unit each
    queries = len(PROMPT) - SINK_POSITION
    assert attention["cumulative"][SINK_POSITION] == pytest.approx(queries, rel=0.1)
    pos = _load(outdir, "pos_attention_outliers")
    assert pos["outlier_layers"] == list(range(planted.PLANTED + 1, planted.LAYERS))
    assert pos["layers"][planted.PLANTED + 1]["head_ratio_min"] > 0.5
    assert pos["layers"][0]["head_ratio_max"] == 0.0


def test_planted_positions_over_calibration(planted_run, tmp_path):
    from lib.data import get_data
    _, outdir = planted_run
    layer = _load(outdir, "pos_activation_outliers_layer")
    assert layer["outlier_layers"] == list(range(planted.PLANTED, planted.LAYERS - 1))
    text = tmp_path / "calibration.txt"
    text.write_text(CALIBRATION_TEXT)
    ids = get_data(planted.CharTokenizer(), 3, 64, source=str(text), seed=1)
    row = layer["layers"][planted.PLANTED]
    for s, (tokens, channels) in enumerate(zip(row["top_tokens"], row["top_channels"])):
        assert chr(int(ids[s, tokens[0]])) == planted.SINK and channels[0] == planted.CHANNEL
    sinks = sum(int((seq == ord(planted.SINK)).sum()) for seq in ids)
    categories = layer["categories"]
    assert categories["count"] == sinks  # every sink position, nothing else
    assert categories["strong_delimiter"] == 0.0 and categories["weak_semantic"] == 0.0
    down = _load(outdir, "pos_activation_outliers_down")
    assert planted.PLANTED in down["outlier_layers"]
    assert down["layers"][planted.PLANTED]["frequent_channels"][0] == planted.NEURON


def test_planted_lifecycle(planted_run):
    _, outdir = planted_run
    emergence = _load(outdir, "lifecycle_emergence")
    assert (emergence["layer"], emergence["token"], emergence["channel"], emergence["neuron"]) == \
        (planted.PLANTED, SINK_POSITION, planted.CHANNEL, planted.NEURON)
    assert emergence["value_after"] > 1000 and abs(emergence["value_before"]) < 1
    spread = _load(outdir, "lifecycle_spread")
    assert spread["outlier_tokens"] == [SINK_POSITION]
    assert planted.PLANTED + 1 <= spread["layer"] <= planted.LAYERS - 1
    # queries from the sink on (half the prompt) put about all their mass on it; the earlier ones cannot see it
    visible = (len(PROMPT) - SINK_POSITION) / len(PROMPT)
    assert spread["head_outlier_ratio"] == pytest.approx([visible] * 4, rel=0.1)
    gone = _load(outdir, "lifecycle_disappearance")
    assert (gone["layer"], gone["token"], gone["channel"], gone["neuron"]) == \
        (planted.LAYERS - 1, SINK_POSITION, planted.CHANNEL, planted.CANCEL)
    assert abs(gone["values_at_layer"]["layer out"]) < 1


def test_planted_compression_valley(planted_run, tmp_path):
    """The planted massive token collapses the entropy where it lives (layers PLANTED .. LAYERS - 2) and
    is the sink of the later layers' heads; the first token is neither."""
    from lib.data import get_data
    _, outdir = planted_run
    valley = _load(outdir, "pos_compression")
    text = tmp_path / "calibration.txt"
    text.write_text(CALIBRATION_TEXT)
    ids = get_data(planted.CharTokenizer(), 3, 64, source=str(text), seed=1)
    assert [w["position"] for w in valley["windows"]] == [int((seq == ord(planted.SINK)).nonzero()[0]) for seq in ids]
    held = list(range(planted.PLANTED, planted.LAYERS - 1))
    assert valley["outlier_layers"] == held and valley["valley"]["entropy"]["layers"] == held
    rows = {r["layer"]: r for r in valley["layers"]}
    for layer in held:  # collapsed by the massive token; without it (and the constant channel) restored
        assert rows[layer]["entropy"] < 0.01 and rows[layer]["norm_ratio_outlier"] > 1000
        assert rows[layer]["entropy_centred_without_outliers"] > 0.5
    for layer, row in rows.items():
        assert row["sink_rate_outlier"] == (1.0 if layer >= planted.PLANTED + 1 else 0.0)
        assert row["sink_rate_first"] == 0.0 and row["norm_ratio_first"] < 10
        assert len(row["attention_on_outlier"]) == 4 and len(row["attention_on_first"]) == 4
    assert valley["definitions"]["valley"].startswith("the layers whose entropy is below 0.5 x the largest")


def test_overrides_are_used(tmp_path):
    """--layer 3 --head 1: the numbers are layer 3's (its output's peak) and head 1's (its query norms, and those of
    key head 0, which head 1 reads in a model with two query heads per key head), by hand from HF's modules."""
    args = _args(tmp_path, "--layer", "3", "--head", "1", "--format", "both")
    model = planted.planted_llama()
    results = cli.run(["existence_activation_outliers_layer", "lifecycle_spread"], args,
                      model=model, tokenizer=planted.CharTokenizer(), spec=planted.spec("p", "P"))
    layer, spread = results["existence_activation_outliers_layer"], results["lifecycle_spread"]
    assert layer["layer"] == 3 and spread["head"] == 1 and spread["layer"] == 3 and spread["kv_head"] == 0
    assert sorted(spread["files"]) == ["lifecycle_spread.pdf", "lifecycle_spread.png"]
    seen = _layer_io(model, 3, torch.tensor([planted.CharTokenizer().encode(PROMPT)]))
    assert layer["max"] == pytest.approx(seen["out"].abs().max().item(), rel=1e-5)
    attn, d = model.model.layers[3].self_attn, planted.HEAD_DIM
    with torch.no_grad():  # a rotation keeps a head's norm, so the projection's norm is the rotated one's
        normed = model.model.layers[3].input_layernorm(seen["in"])
        q, k = attn.q_proj(normed)[:, d:2 * d], attn.k_proj(normed)[:, :d]
    assert spread["per_token"]["q head 1 (L2)"] == pytest.approx(q.norm(dim=-1).tolist(), rel=1e-4)
    assert spread["per_token"]["k head 0 (L2)"] == pytest.approx(k.norm(dim=-1).tolist(), rel=1e-4)


@pytest.mark.parametrize("extra, message", [
    (["--layer", "9"], "out of range"),
    (["--layer", "4"], r"--layer 4 out of range: P has layers 0\.\.3"),
    (["--head", "7"], "out of range"),
    (["--seqlen", "1000"], "allows at most"),
    (["--prompt", "   "], "empty"),
])
def test_bad_requests_are_user_errors(tmp_path, extra, message):
    args = _args(tmp_path, *extra)
    names = ["lifecycle_spread", "pos_activation_outliers_layer"]
    with pytest.raises(UserError, match=message):
        cli.run(names, args, model=planted.planted_llama(), tokenizer=planted.CharTokenizer(),
                spec=planted.spec("p", "P"))


def _script(name, *argv, cwd):
    """The script in a subprocess, run from `cwd` (its default --savedir, figures/, is relative to it)."""
    return subprocess.run([sys.executable, str(ROOT / f"{name}.py"), *argv], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("argv, message", [
    (["--model", "no_such_model"], "unknown model"),
    (["--prompt", ""], "--prompt is empty"),
    (["--savedir", "/dev/null/figures"], "cannot write to --savedir"),
])
def test_scripts_fail_with_one_line(argv, message, tmp_path):
    result = _script("existence_activation_outliers_layer", *argv, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_json_is_written_atomically_and_earlier_files_survive(tmp_path):
    args = _args(tmp_path)
    model, tok = planted.planted_llama(), planted.CharTokenizer()
    cli.run(["existence_weight_outliers"], args, model=model, tokenizer=tok, spec=planted.spec("p", "P"))
    before = (tmp_path / "out" / "p" / "existence_weight_outliers.json").read_text()
    args.layer = 99
    with pytest.raises(UserError):
        cli.run(["existence_weight_outliers"], args, model=model, tokenizer=tok, spec=planted.spec("p", "P"))
    assert (tmp_path / "out" / "p" / "existence_weight_outliers.json").read_text() == before
    assert not [p for p in (tmp_path / "out" / "p").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_full_suite_on_the_default_model(tmp_path):
    """reproduce.py on the real offline default model, with a short calibration to keep it a smoke test."""
    result = subprocess.run([sys.executable, str(ROOT / "reproduce.py"), "--savedir", str(tmp_path),
                             "--nsamples", "2", "--seqlen", "128"], capture_output=True, text=True, cwd=ROOT,
                            timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    outdir = tmp_path / "gemma3_270m"
    data = {name: _load(outdir, name) for name in FIGURES}
    for name, values in data.items():
        assert values["files"], name
        for file in values["files"]:
            assert (outdir / file).stat().st_size > 1000
    index = (outdir / "index.md").read_text()
    assert all(name in index for name in FIGURES)
    layer = data["existence_activation_outliers_layer"]
    assert layer["outliers_found"] and layer["layer"] in layer["outlier_layers"]
    # one detection feeds every single-prompt figure: they must agree on where the outliers are
    assert data["lifecycle_emergence"]["layer"] == layer["layer"]
    assert data["lifecycle_emergence"]["token"] in layer["outlier_tokens"]
    assert data["lifecycle_emergence"]["channel"] in layer["outlier_channels"]
    assert data["existence_attention_outliers"]["layer"] == layer["layer"] + 1
    assert data["lifecycle_disappearance"]["layer"] > layer["layer"]
    # the prompt's outlier layers are outlier layers over calibration text too
    assert set(layer["outlier_layers"]) & set(data["pos_activation_outliers_layer"]["outlier_layers"])


def test_a_flag_a_script_does_not_use_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main("existence_activation_outliers_layer", ["--data", "/nonexistent"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "--data is not a flag of existence_activation_outliers_layer" in err and "--prompt" in err
    with pytest.raises(SystemExit):
        cli.main("pos_weight_outliers", ["--prompt", "hi"])
    assert "--prompt is not a flag of pos_weight_outliers" in capsys.readouterr().err


def test_each_script_lists_only_its_flags_and_reproduce_says_what_each_affects():
    flags = lambda p: {a.option_strings[0] for a in p._actions if a.option_strings} - {"-h"}  # noqa: E731
    common = flags(cli.parser(groups=()))
    weights = FIGURES["pos_weight_outliers"]
    assert flags(cli.parser(weights.description, weights.flags)) == common
    spread = flags(cli.parser(groups=FIGURES["lifecycle_spread"].flags))
    assert spread - common == {"--prompt", "--layer", "--head", "--outlier-factor", "--outlier-min-abs"}
    args = cli.parse_figure_args("lifecycle_spread", ["--head", "1"])
    assert args.head == 1 and args.data is None and args.seed == 1  # other groups keep their defaults
    affects = {g: [n for n, f in FIGURES.items() if g in f.flags] for g in cli.FLAG_GROUPS}
    help_text = cli.parser(affects=affects).format_help()
    assert "[figures: lifecycle_spread]" in " ".join(help_text.split())


def test_summary_across_two_models(random_run, planted_run, tmp_path):
    import shutil
    from lib.summary import write_summary
    for _, outdir in (random_run, planted_run):
        shutil.copytree(outdir, tmp_path / "figs" / outdir.name)
    cons = tmp_path / "cons" / "planted"
    cons.mkdir(parents=True)
    (cons / "consequences.json").write_text(json.dumps({"layers_are": "0-based", "results": [{"baseline": {"ppl": 9.5}, "compression": {
        "w8a8": {"ppl": 10.25}}, "interventions": {"attention_sinks": {"mask_attn_sink": {"ppl": 30.0}}}}]}))
    md, js, rows = write_summary(tmp_path / "figs", tmp_path / "cons")
    by_model = {r["model"]: r for r in rows}
    planted_row, random_row = by_model["planted"], by_model["random"]
    assert planted_row["prompt_outlier_channels"] == [planted.CHANNEL] and planted_row["writer_column"] == planted.NEURON
    assert planted_row["emergence_layer"] == planted.PLANTED
    assert planted_row["consequences"] == {"fp32": 9.5, "w8a8": 10.25, "mask_attn_sink": 30.0}
    assert random_row["first_outlier_layer"] is None and random_row["emergence_layer"] is None
    text = md.read_text()
    assert "| Planted |" in text and "| Random |" in text and "10.25" in text
    assert "| entropy valley: layers (depth) | mean-centred valley: layers (depth) |" in text
    # the largest |h| of every figure's inputs against float16's range, and what the inputs start with
    assert planted_row["headroom"]["largest_abs"] == max(r["headroom"]["largest_abs"] for r in (
        json.loads(p.read_text()) for p in (tmp_path / "figs" / "planted").glob("*.json")) if "headroom" in r)
    assert planted_row["input"] == [] and "| prepended |" in text and "x float16's largest finite value) |" in text
    assert "mean attention on it passes" in planted_row["finding"] and "float16's largest finite value (65,504)" in \
        planted_row["finding"]
    assert planted_row["valley"]["layers"] == list(range(planted.PLANTED, planted.LAYERS - 1))
    assert json.loads(js.read_text())["models"][0]["model"] in ("planted", "random")
    # the picture across models and the paper's pattern per model (lib/cross_model.py)
    assert (tmp_path / "figs" / "summary.png").is_file() and "![systematic outliers across models](summary.png)" in text
    assert planted_row["finding"].startswith("Planted (") and planted_row["finding"] in text
    assert random_row["finding"].endswith("the activation rule flags no outlier on the calibration text.")
    pattern = {p["property"]: p for p in planted_row["paper_pattern"]}
    assert pattern["fixed channels"]["verdict"] == "holds" and f"channel(s) {planted.CHANNEL}" in \
        pattern["fixed channels"]["numbers"]
    assert pattern["zeroing hurts and the mean does not"]["verdict"] == "not measured"
    assert "| the paper's property (LLaMA-2-7B) |" in text
    assert json.loads(js.read_text())["layers_are"] == "0-based"
    with pytest.raises(UserError, match="no model folders"):
        write_summary(tmp_path / "cons")
    old = json.loads((tmp_path / "figs" / "planted" / "pos_compression.json").read_text())
    (tmp_path / "figs" / "planted" / "pos_compression.json").write_text(json.dumps({**old, "layers_are": "1-based"}))
    with pytest.raises(UserError, match="pos_compression.json counts layers from 1"):
        write_summary(tmp_path / "figs", tmp_path / "cons")  # no summary mixes the two numberings


def test_planted_dominant_outlier_and_where_the_rule_stops(planted_run):
    """The prompt's dominant outlier, checked against HF's own hidden states: the planted entry, flagged from the
    planted layer until the last layer cancels it (under the floor there)."""
    _, outdir = planted_run
    for name in ("existence_activation_outliers_layer", "existence_attention_outliers", "lifecycle_emergence",
                 "lifecycle_relocation"):
        dominant = _load(outdir, name)["dominant_outlier"]
        assert (dominant["token"], dominant["channel"]) == (SINK_POSITION, planted.CHANNEL), name
        assert dominant["flagged_layers"] == list(range(planted.PLANTED, planted.LAYERS - 1))
        assert f"from layer {planted.LAYERS - 1} on it fails" in dominant["text"] and "under the floor" in dominant["text"]
    model = planted.planted_llama()
    ids = torch.tensor([planted.CharTokenizer().encode(PROMPT)])
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    for row in dominant["per_layer"][:-1]:  # the last hidden state is after the final norm
        h = hidden[row["layer"] + 1][0]  # hidden_states[i + 1] is layer i's output
        assert row["abs"] == pytest.approx(float(h[SINK_POSITION, planted.CHANNEL].abs()), rel=1e-4)
        assert row["over_median"] == pytest.approx(row["abs"] / float(h.abs().median()), rel=1e-3)


def test_planted_relocation_keeps_a_content_written_outlier_and_moves_the_sink(planted_run):
    """The planted outlier is written from the sink character's own embedding (content, not position), so masking
    it as a key leaves it where it is; the later layers' attention, which followed it, has to go elsewhere."""
    _, outdir = planted_run
    r = _load(outdir, "lifecycle_relocation")
    assert r["outlier_tokens"] == [SINK_POSITION] and r["masked_layers"] == list(range(planted.LAYERS))
    assert r["prompt_before"]["massive_token"] == r["prompt_after"]["massive_token"] == SINK_POSITION
    assert r["prompt_before"]["sink_token"] == SINK_POSITION and r["prompt_after"]["sink_token"] != SINK_POSITION
    every = r["windows"]["conditions"]["every_layer"]
    assert every["outliers"]["masked_layers"] == list(range(planted.LAYERS))
    assert {"ppl", "nll_change", "nll_change_stderr"} <= set(every["control"])


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_the_figure_suite_runs_on_a_tiny_model_of_every_family(family, tmp_path, monkeypatch):
    """Every figure script on a random tiny model of each family in the adapter table, but those a family cannot
    serve: a mixture of experts has no single MLP to read, and key masking (lifecycle_relocation) needs a family
    whose attention goes through transformers' attention registry."""
    from lib.interventions import supports_sink_mask
    from monkey_patch import ModelView
    model = tiny_model(family)
    names = list(FIGURES)
    if ModelView(model).family.down is None:
        names = [n for n in names if "down" not in n and "weight" not in n and "lifecycle" not in n
                 and "compression" not in n]
    if not supports_sink_mask(model):
        names.remove("lifecycle_relocation")
    # what differs between families is what is read from the model, not the drawing: the figures are not rendered
    monkeypatch.setattr(cli.plotting, "save", lambda fig, base, formats: cli.plotting.plt.close(fig) or [])
    results = cli.run(names, _args(tmp_path), model=model, tokenizer=planted.CharTokenizer(),
                      spec=planted.spec(family, family))
    assert set(results) == set(names)
    assert all((tmp_path / "out" / family / f"{n}.json").exists() for n in names)


def test_layer_zero_is_the_first_layer(tmp_path):
    """--layer 0 draws the first decoder layer: its output is Hugging Face's output_hidden_states[1] (entry 0 is the
    embedding)."""
    model, ids = planted.planted_llama(), torch.tensor([planted.CharTokenizer().encode(PROMPT)])
    result = cli.run(["existence_activation_outliers_layer"], _args(tmp_path, "--layer", "0"), model=model,
                     tokenizer=planted.CharTokenizer(), spec=planted.spec("p", "P"))["existence_activation_outliers_layer"]
    with torch.no_grad():
        first = model(ids, output_hidden_states=True).hidden_states[1][0]
    assert result["layer"] == 0 and result["why"] == "--layer" and result["layers_are"] == "0-based"
    assert result["max"] == pytest.approx(first.abs().max().item(), rel=1e-5)
    assert result["summary"][0].startswith("P layer output, layer 0 (--layer)")


def test_every_figure_json_and_the_index_page_state_the_numbering(planted_run):
    _, outdir = planted_run
    for name in FIGURES:
        assert _load(outdir, name)["layers_are"] == "0-based", name
    index = cli.write_index(outdir, "Planted", 1.0, []).read_text()
    assert index.count("0-based") == 1 and "1-based" not in index

