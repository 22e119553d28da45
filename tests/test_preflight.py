"""What is checked before the weights load (lib/preflight.py), where outputs go by default, and what a failed run
leaves behind: nothing, not even an empty folder."""
import json
from pathlib import Path

import pytest
import torch

import consequences
import planted
from lib import cli, preflight
from lib.errors import UserError
from lib.files import check_writable
from lib.perplexity import hf_logits
from lib.tiny_models import tiny_model
from monkey_patch import ModelView


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny Llama saved as a Hugging Face folder: config.json and weights, as --model takes a local folder."""
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    return folder


def _no_load(*args, **kwargs):
    pytest.fail("the weights were loaded before the mistake was found")


def test_the_shape_is_read_from_the_config_alone(model_folder):
    config = json.loads((model_folder / "config.json").read_text())
    shape = preflight.model_shape(str(model_folder))
    assert (shape.title, shape.num_layers, shape.max_positions, shape.hidden, shape.intermediate) == \
        ("tiny-llama", config["num_hidden_layers"], config["max_position_embeddings"], config["hidden_size"],
         config["intermediate_size"])
    with pytest.raises(UserError, match="unknown model"):
        preflight.model_shape("no_such_model")


@pytest.mark.parametrize("argv, message", [
    (["--layer", "99"], "--layer 99 out of range: tiny-llama has layers 0..2"),
    (["--layer", "3"], "--layer 3 out of range: tiny-llama has layers 0..2"),
    (["--seqlen", "100000000"], "--seqlen has 100000000 tokens but tiny-llama allows at most 2048"),
])
def test_a_figure_script_refuses_before_the_weights_load_and_leaves_no_folder(model_folder, tmp_path, monkeypatch,
                                                                               capsys, argv, message):
    monkeypatch.setattr(cli, "load_model", _no_load)
    savedir = tmp_path / "new" / "figures"
    with pytest.raises(SystemExit) as e:
        cli.main("pos_activation_outliers_layer", ["--model", str(model_folder), "--savedir", str(savedir), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "new").exists()


def test_a_run_that_fails_after_loading_leaves_no_empty_model_folder(tmp_path):
    args = cli.parser().parse_args(["--savedir", str(tmp_path / "new" / "figures"), "--layer", "9"])
    with pytest.raises(UserError, match="out of range"):
        cli.run(["existence_activation_outliers_layer"], args, model=planted.planted_llama(),
                tokenizer=planted.CharTokenizer(), spec=planted.spec("p", "P"))
    assert not (tmp_path / "new").exists()


def _total_ram() -> int:
    """The machine's memory as /proc/meminfo states it."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        pytest.skip("no /proc/meminfo")
    kib = next(int(line.split()[1]) for line in meminfo.read_text().splitlines() if line.startswith("MemTotal:"))
    return kib * 1024


def test_one_sequence_larger_than_the_memory_is_refused_and_what_fits_is_not():
    """seqlen x (hidden + intermediate) values held at once: with 4000 float32 values a token, a sequence of 1.5 x
    the RAM's worth is refused; in bfloat16 the same sequence needs 0.75 x the RAM and passes, as does a quarter."""
    shape = preflight.ModelShape("Wide", num_layers=2, max_positions=None, hidden=1000, intermediate=3000)
    per_token = 4000 * 4
    seqlen = int(1.5 * _total_ram() / per_token)
    with pytest.raises(UserError, match=r"--seqlen \d+: one sequence's activations need at least .* GiB"):
        preflight.check(shape, seqlen=seqlen, device="cpu")
    preflight.check(shape, seqlen=seqlen, device="cpu", dtype="bfloat16")
    preflight.check(shape, seqlen=seqlen // 6, device="cpu")
    preflight.check(shape, layer=0, seqlen=None)
    preflight.check(shape, layer=1, seqlen=None)
    with pytest.raises(UserError, match=r"has layers 0\.\.1"):
        preflight.check(shape, layer=2)


def test_check_writable_makes_nothing_and_names_what_it_cannot_write(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_writable(target) == target and not (tmp_path / "a").exists()
    with pytest.raises(UserError, match="cannot write to --savedir '/dev/null/x'"):
        check_writable("/dev/null/x")


# --- consequences.py -------------------------------------------------------------------------------------------

def _subject():
    model = planted.planted_llama()
    ids = torch.tensor([planted.CharTokenizer().encode(("Summer is warm. W Winter is cold. W " * 3)[:96])])
    windows, calib = ids[:, :48].repeat(2, 1), ids[:, 48:96].repeat(2, 1)
    return consequences.Subject("planted", "Planted Llama", model, ModelView(model).layers, hf_logits(model),
                                lambda x: model.model(input_ids=x), windows, calib,
                                {"source": "test", "split": "eval", "seqlen": 48, "windows": 2, "calib_windows": 2,
                                 "calib_split": "calib"})


def test_consequences_writes_a_scratch_folder_unless_told_otherwise(tmp_path, monkeypatch):
    """Without --savedir the outputs go to consequences-out/<model>/ where the command runs, never to the committed
    results/consequences/ (the session fixture also fails a test that writes into the checkout)."""
    monkeypatch.chdir(tmp_path)
    args = consequences.parser().parse_args(["--calib-samples", "2", "--methods", "--interventions"])
    consequences.run(args, [_subject()], command="python consequences.py (test)", log=lambda line: None)
    assert sorted(p.name for p in (tmp_path / "consequences-out" / "planted").iterdir()) == \
        ["consequences.json", "consequences.md", "consequences.png"]


def test_consequences_refuses_a_window_longer_than_the_positions_before_loading(model_folder, tmp_path, monkeypatch,
                                                                                capsys):
    monkeypatch.setattr(consequences, "hf_subject", _no_load)
    with pytest.raises(SystemExit) as e:
        consequences.main(["--model", str(model_folder), "--seqlen", "4096", "--savedir", str(tmp_path / "new" / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "tiny-llama allows at most 2048" in err, err
    assert not (tmp_path / "new").exists()
