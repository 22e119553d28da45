"""Models bigger than the memory they are given: accelerate's device map with layers on the CPU and others offloaded
to disk (or CPU offload), on the CPU. Every figure, the compression methods and consequences.py must give what the
same model gives loaded whole; an offloaded layer's weights are read one module at a time; quantized weights are
dequantized (bitsandbytes) or refused in one line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import consequences
import planted
from lib import check, cli, compression
from lib.errors import UserError
from lib.models import load_model, parse_max_memory, placement
from lib.paper_figures import FIGURES
from lib.tiny_models import layer_bytes, memory_for_layers, save_folder, tiny_model
from monkey_patch import ModelView
from monkey_patch.weights import PackedWeights, count_offloaded, is_offloaded

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = "Summer is warm. Winter is cold. The sun is high, and we walk on.\n" * 40
FAMILIES = ("llama", "gpt2", "phi3")  # separate projections; Conv1D with a fused qkv and tied embeddings; fused qkv and gate_up


def _figure_args(tmp_path, name):
    data = tmp_path / "calibration.txt"
    data.write_text(CALIBRATION)
    return cli.parser().parse_args(["--savedir", str(tmp_path / name), "--data", str(data), "--nsamples", "2",
                                    "--seqlen", "32"])


def _load_both(folder, model, tmp_path, on_cpu=1):
    """The saved model loaded whole on the CPU, and with a device map that keeps `on_cpu` layers on the CPU and
    offloads the others to disk (forced with max_memory and offload_folder, as --max-memory and --offload-folder)."""
    whole = load_model(folder, device="cpu")
    budget = memory_for_layers(model, on_cpu)
    assert budget < sum(p.numel() * p.element_size() for p in model.parameters())  # the model does not fit
    offloaded = load_model(folder, device="auto", max_memory=f"cpu={budget}", offload_folder=str(tmp_path / "offload"))
    return whole, offloaded


@pytest.mark.parametrize("family", FAMILIES)
def test_every_figure_with_disk_offload_equals_the_whole_model(family, tmp_path, capsys):
    model = tiny_model(family)
    folder = save_folder(model, tmp_path / "model")
    whole, offloaded = _load_both(folder, model, tmp_path)
    net = offloaded[0]
    n = ModelView(net).num_layers
    assert placement(whole[0]) == {"layers": {"cpu": n}, "offloaded_layers": 0}
    assert placement(net) == {"layers": {"cpu": 1, "disk": n - 1}, "offloaded_layers": n - 1}
    assert ModelView(net).module(n - 1, "down").weight.device.type == "meta"  # really offloaded
    expected = cli.run(list(FIGURES), _figure_args(tmp_path, "whole"), *whole)
    with count_offloaded(net) as held:
        got = cli.run(list(FIGURES), _figure_args(tmp_path, "offloaded"), *offloaded)
    for name in FIGURES:
        assert check.differences(expected[name], got[name]) == [], name
        assert got[name]["provenance"]["placement"] == placement(net)
    # the weights of the offloaded layers were read from disk, one module at a time: never a whole layer's more
    assert held.loads > 0 and 0 < held.peak <= max(layer_bytes(model))
    assert held.now == 0  # nothing loaded is left behind
    capsys.readouterr()


def test_the_script_with_max_memory_and_offload_folder_gives_the_same_json(tmp_path):
    model = planted.planted_llama()
    folder = save_folder(model, tmp_path / "planted")
    budget = memory_for_layers(model, 2)
    assert budget < sum(p.numel() * p.element_size() for p in model.parameters())

    def run(out, *flags):
        done = subprocess.run([sys.executable, "pos_weight_outliers.py", "--model", folder, "--savedir",
                               str(tmp_path / out), *flags], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads((tmp_path / out / "planted" / "pos_weight_outliers.json").read_text())

    whole = run("whole", "--device", "cpu")
    offloaded = run("offloaded", "--device", "auto", "--max-memory", f"cpu={budget}", "--offload-folder",
                    str(tmp_path / "offload"))
    assert check.differences(whole, offloaded) == []
    assert offloaded["provenance"]["placement"] == {"layers": {"cpu": 2, "disk": 2}, "offloaded_layers": 2}
    assert whole["provenance"]["placement"] == {"layers": {"cpu": 4}, "offloaded_layers": 0}
    # the planted down_proj column is found in its layer, read from the model folder as it is
    assert offloaded["layers"][planted.PLANTED]["top_columns"][0] == planted.NEURON


def test_weights_read_from_a_cpu_offload_map_equal_the_model_s(tmp_path):
    from accelerate import cpu_offload
    model = tiny_model("phi3")
    reference = tiny_model("phi3")
    cpu_offload(model, execution_device=torch.device("cpu"))
    view, ref = ModelView(model), ModelView(reference)
    assert is_offloaded(view.module(0, "down")) and view.module(0, "down").weight.device.type == "meta"
    with count_offloaded(model) as held:
        for layer in range(view.num_layers):
            for role in view.weight_roles():
                torch.testing.assert_close(view.weight(layer, role), ref.weight(layer, role), rtol=0, atol=0)
    assert held.peak == 0  # a CPU-offload map keeps its tensors: reading them loads nothing more


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_compression_of_offloaded_layers_equals_the_whole_model_s_and_changes_nothing_stored(family, tmp_path):
    model = tiny_model(family)
    folder = save_folder(model, tmp_path / "model")
    (whole, _, _), (offloaded, _, _) = _load_both(folder, model, tmp_path)
    ids = torch.tensor([[3, 17, 64, 5, 99, 12, 40, 7]])
    with torch.no_grad():
        before = offloaded(ids).logits
        for method in compression.METHODS:
            with compression.compressed(whole, ModelView(whole).layers, method):
                want = whole(ids).logits
            with compression.compressed(offloaded, ModelView(offloaded).layers, method):
                got = offloaded(ids).logits
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=method)
            assert not torch.equal(got, before)
        torch.testing.assert_close(offloaded(ids).logits, before, rtol=0, atol=0)  # the stored weights are intact


def test_consequences_with_offload_equals_the_whole_model(tmp_path):
    folder = save_folder(planted.planted_llama(), tmp_path / "planted")
    text = tmp_path / "text.txt"
    text.write_text(("Summer is warm. W Winter is cold. W " * 3)[:96] * 40)
    budget = memory_for_layers(planted.planted_llama(), 2)

    def run(out, *flags):
        args = consequences.parser().parse_args(
            ["--model", folder, "--data", str(text), "--seqlen", "48", "--nsamples", "2", "--calib-samples", "2",
             "--methods", "w8_channel", "prune50", "--interventions", "zero", "mask_attn_sink", "--scale-test",
             "--savedir", str(tmp_path / out), *flags])
        return consequences.run(args, command="python consequences.py (test)", log=lambda line: None)

    whole = run("whole", "--device", "cpu")
    offloaded = run("offloaded", "--max-memory", f"cpu={budget}", "--offload-folder", str(tmp_path / "offload"))
    assert check.differences(whole, offloaded) == []
    measured = offloaded["results"][0]
    assert set(measured["compression"]) == {"w8_channel", "prune50"} and measured["scale_test"]["modes"]
    assert measured["compression"]["prune50"]["ppl"] != measured["baseline"]["ppl"]
    assert offloaded["results"][0]["provenance"]["placement"] == {"layers": {"cpu": 2, "disk": 2},
                                                                  "offloaded_layers": 2}


# --- flags ------------------------------------------------------------------------------------------------------

def test_max_memory_is_read_as_accelerate_s():
    assert parse_max_memory("0=70GiB,1=70GiB,cpu=200GiB") == {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}
    assert parse_max_memory("cpu=123456, disk=500GB") == {"cpu": 123456, "disk": "500GB"}
    for bad, message in (("cpu", "each entry is DEVICE=SIZE"), ("gpu0=1GiB", "unknown device 'gpu0'"),
                         ("cpu=12XB", "size '12XB' of cpu"), ("cpu=", "each entry is DEVICE=SIZE")):
        with pytest.raises(UserError, match=message):
            parse_max_memory(bad)


@pytest.mark.parametrize("argv, message", [
    (["--device", "cpu", "--max-memory", "cpu=1GiB"], "use them with --device auto"),
    (["--max-memory", "cpu=2GiB", "--offload-folder", "{model}"], "holds other files (config.json"),
    (["--max-memory", "cuda0=2GiB"], "unknown device 'cuda0'"),
])
def test_placement_mistakes_are_one_line_errors(argv, message, tmp_path, capsys):
    folder = save_folder(tiny_model("llama"), tmp_path / "model")
    argv = [a.replace("{model}", folder) for a in argv]
    capsys.readouterr()  # the save's progress bar
    before = sorted(p.name for p in Path(folder).iterdir())
    with pytest.raises(SystemExit) as exit_:
        cli.main("pos_weight_outliers", ["--model", folder, "--savedir", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in Path(folder).iterdir()) == before  # nothing of the model folder overwritten


def test_a_gpt2_checkpoint_takes_no_placement_flags():
    args = consequences.parser().parse_args(["--gpt2", "gpt-2/out-x", "--max-memory", "cpu=1GiB"])
    with pytest.raises(UserError, match="--max-memory and --offload-folder are for --model"):
        consequences.check_args(args)


# --- quantized weights ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bnb_models(tmp_path_factory):
    pytest.importorskip("bitsandbytes")
    import transformers as tf
    tmp = tmp_path_factory.mktemp("bnb")
    model = tiny_model("llama")
    folder = save_folder(model, tmp / "fp32")
    configs = {"4bit": tf.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                             bnb_4bit_compute_dtype=torch.float32),
               "8bit": tf.BitsAndBytesConfig(load_in_8bit=True)}
    quantized = {}
    for name, config in configs.items():
        q = tf.AutoModelForCausalLM.from_pretrained(folder, quantization_config=config, device_map="cpu")
        quantized[name] = save_folder(q, tmp / name)  # a pre-quantized checkpoint, as a user would have one
    return model, quantized


def test_bitsandbytes_weights_are_dequantized(bnb_models):
    model, folders = bnb_models
    ref = ModelView(model)
    for name, folder in folders.items():
        net, _, _ = load_model(folder, device="cpu")
        view = ModelView(net)
        for layer in range(view.num_layers):
            for role in view.weight_roles():
                module, want = view.module(layer, role), ref.weight(layer, role)
                got = view.weight(layer, role)
                assert got.shape == want.shape and got.dtype == torch.float32
                if name == "8bit":  # by hand: int8 row-wise absmax, w = q * SCB / 127
                    by_hand = module.weight.data.float() * module.weight.SCB.float()[:, None] / 127
                    torch.testing.assert_close(got, by_hand)
                    assert (got - want).abs().max() <= want.abs().amax(1).max() / 127
                else:  # NF4: within half the codebook's widest gap (-1 to -0.6962) x its block's absmax
                    blocks = want.detach().flatten().view(-1, module.weight.quant_state.blocksize)
                    error = (got.flatten().view_as(blocks) - blocks).abs()
                    assert (error <= (1 - 0.6962) / 2 * blocks.abs().amax(1, keepdim=True) + 1e-7).all()
        with pytest.raises(UserError, match="cannot simulate w8_tensor.*Linear(4bit|8bitLt) keeps its weight as"):
            with compression.compressed(net, view.layers, "w8_tensor"):
                pass


def test_the_weight_figure_of_an_8bit_model_is_that_of_its_dequantized_weights(bnb_models, tmp_path, capsys):
    model, folders = bnb_models
    args = _figure_args(tmp_path, "q")
    got = cli.run(["pos_weight_outliers"], args, *load_model(folders["8bit"], device="cpu"))["pos_weight_outliers"]
    want = cli.run(["pos_weight_outliers"], args, model=model, tokenizer=planted.CharTokenizer(),
                   spec=planted.spec("fp32", "fp32"))["pos_weight_outliers"]
    for a, b in zip(got["layers"], want["layers"]):
        assert a["max_ratio"] == pytest.approx(b["max_ratio"], rel=0.02)
        assert a["median_ratio"] == pytest.approx(b["median_ratio"], rel=0.02)
    capsys.readouterr()


class PackedLinear(nn.Module):
    """What GPTQ and AWQ kernels keep: packed int32 weights with scales and zero points, no plain weight."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("qweight", torch.zeros(linear.in_features // 8, linear.out_features, dtype=torch.int32))
        self.register_buffer("qzeros", torch.zeros(1, linear.out_features // 8, dtype=torch.int32))
        self.register_buffer("scales", torch.ones(1, linear.out_features))
        self.plain = linear  # the forward still works

    def forward(self, x):
        return self.plain(x)


def test_packed_weights_are_refused_in_one_line(tmp_path):
    model = tiny_model("llama")
    mlp = model.model.layers[1].mlp
    mlp.down_proj = PackedLinear(mlp.down_proj)
    with pytest.raises(PackedWeights, match="PackedLinear keeps no plain weight .packed qweight."):
        ModelView(model).weight(1, "down")
    for figure in ("pos_weight_outliers", "existence_weight_outliers"):
        with pytest.raises(UserError) as error:
            cli.run([figure], _figure_args(tmp_path, "packed"), model=model, tokenizer=planted.CharTokenizer(),
                    spec=planted.spec("packed", "Packed"))
        text = str(error.value)
        assert len(text.splitlines()) == 1 and "load the unquantized checkpoint" in text and "--offload-folder" in text
    with pytest.raises(UserError, match="cannot simulate prune50 on block 1.mlp.down_proj: PackedLinear"):
        with compression.compressed(model, model.model.layers, "prune50"):
            pass
    # an int8 weight with no dequantization known here is not a weight either
    mlp.down_proj = mlp.down_proj.plain
    mlp.down_proj.weight = nn.Parameter(torch.ones(32, 64, dtype=torch.int8), requires_grad=False)
    with pytest.raises(PackedWeights, match="Linear keeps its weight as int8"):
        ModelView(model).weight(1, "down")
