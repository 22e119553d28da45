"""OpenWebText in GPT-2 BPE: train.bin and val.bin (uint16 token ids, EOT after every document), as nanoGPT.

    python data/openwebtext/prepare.py                        # from the Hugging Face hub (internet, `datasets`)
    python data/openwebtext/prepare.py --data_dir=/data/owt   # a local copy, no network
    python data/openwebtext/prepare.py --num_proc=16 --out_dir=data/openwebtext

0.05% of the documents are held out as val (seed 2357, datasets' train_test_split, as nanoGPT): from the full
corpus's 8,013,769 documents, about 9B train tokens (17 GB) and 4M val tokens.
--data_dir: a folder (searched recursively, files in path order) of .txt files (one document each), .jsonl files
(one {"text": ...} per line), .parquet files (a "text" column) and/or the hub's urlsf_subset*.tar archives.
Every document's runs of three or more newlines become two and its ends are stripped, as the hub's loader does.
Relative --out_dir paths are taken relative to gpt-2/, --data_dir as given.
"""
import json
import os
import re
import sys
import tarfile
from pathlib import Path

import numpy as np

from lib.configurator import UserError, configure, resolve_path, user_errors_exit
from lib.gpt2_data import EOT, gpt2_encoding

HERE = os.path.dirname(os.path.abspath(__file__))

# The hub's openwebtext, Skylion007/openwebtext: its main branch holds the corpus as 21 archives,
# subsets/urlsf_subset00.tar .. urlsf_subset20.tar (each a tar of xz-compressed tars of one .txt per document), and
# the loading script openwebtext.py that read them, which `datasets` 4 and later refuse to run. The repository's
# parquet conversion (data/train-000NN-of-00080.parquet) sits in pull-request branches, not on main. So the
# archives are read here as that script read them: same documents, same order, same cleanup, hence nanoGPT's
# split. If the repository loses its script (holding data files only), `datasets` loads it directly instead.
HUB_REPO = "Skylion007/openwebtext"
HUB_ARCHIVES = [f"subsets/urlsf_subset{i:02d}.tar" for i in range(21)]
VAL_FRACTION, SPLIT_SEED = 0.0005, 2357
SUFFIXES = (".txt", ".jsonl", ".parquet", ".tar")
WRITE_SHARDS = 1024  # contiguous pieces the .bin is written in, to bound memory

DEFAULTS = dict(num_proc=max(1, (os.cpu_count() or 2) // 2), data_dir="", out_dir="data/openwebtext")


def clean(text):
    return re.sub("\n\n\n+", "\n\n", text).strip()


# --- reading documents ------------------------------------------------------------------------------------------

def _visible_files(tar):
    """(name, file) of a streamed tar's regular files, hidden ones skipped, in archive order."""
    for member in tar:
        if member.isreg() and not os.path.basename(member.name).startswith((".", "__")):
            yield member.name, tar.extractfile(member)


def archive_documents(path):
    """The documents of one urlsf_subset*.tar: its .xz members are tars of .txt files, one document each."""
    with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as outer:
        for name, xz in _visible_files(outer):
            if name.endswith(".xz"):
                with tarfile.open(fileobj=xz, mode="r|*") as inner:
                    for txt_name, txt in _visible_files(inner):
                        if txt_name.endswith(".txt"):
                            yield txt.read().decode("utf-8")


def jsonl_documents(path):
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number}: not a JSON line ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise UserError(f"{path}:{number}: needs a string field \"text\"")
            yield row["text"]


def parquet_documents(path):
    import pyarrow.parquet as pq
    table = pq.ParquetFile(path)
    if "text" not in table.schema_arrow.names:
        raise UserError(f"{path}: no \"text\" column (columns: {', '.join(table.schema_arrow.names)})")
    for batch in table.iter_batches(columns=["text"]):
        yield from batch.column("text").to_pylist()


READERS = {".txt": lambda path: [Path(path).read_text(encoding="utf-8")], ".jsonl": jsonl_documents,
           ".parquet": parquet_documents, ".tar": archive_documents}


def documents(paths):
    """Rows {"text": ...} of every document of `paths`, in order (a datasets generator)."""
    for path in paths:
        try:
            for text in READERS[Path(path).suffix](path):
                yield {"text": clean(text)}
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def corpus_from_files(paths, num_proc):
    """A datasets.Dataset of the documents of `paths` (Arrow, memory-mapped, in the datasets cache)."""
    import datasets
    try:
        return datasets.Dataset.from_generator(documents, gen_kwargs={"paths": [str(p) for p in paths]},
                                               features=datasets.Features({"text": datasets.Value("string")}),
                                               num_proc=min(num_proc, len(paths)) if num_proc > 1 else None)
    except Exception as e:  # datasets wraps what the generator raised
        cause = e
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        raise (cause or UserError(f"reading the corpus failed: {type(e).__name__}: {e}")) from None


def local_corpus(data_dir, num_proc):
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise UserError(f"--data_dir {data_dir!r} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise UserError(f"--data_dir {data_dir!r} holds no {', '.join(SUFFIXES)} files")
    return corpus_from_files(files, num_proc)


def hub_corpus(num_proc):
    import datasets
    from huggingface_hub import hf_hub_download
    try:
        try:
            return datasets.load_dataset(HUB_REPO, split="train", num_proc=num_proc)
        except RuntimeError as e:  # the repository still holds its loading script: read the archives it read
            if "scripts are no longer supported" not in str(e):
                raise
        paths = [hf_hub_download(HUB_REPO, name, repo_type="dataset") for name in HUB_ARCHIVES]
    except Exception as e:
        raise UserError(f"could not download openwebtext ({HUB_REPO}) from the Hugging Face hub: "
                        f"{download_failure(e)}; or prepare a local copy with --data_dir=FOLDER") from None
    return corpus_from_files(paths, num_proc)


def download_failure(e) -> str:
    """What really went wrong with a hub download, in a few words."""
    from huggingface_hub import errors
    chain = []
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(f"{type(x).__name__} {x}" for x in chain)
    if "OfflineModeIsEnabled" in text:
        return "offline mode is on (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set)"
    if any(isinstance(x, (errors.LocalEntryNotFoundError, ConnectionError, TimeoutError)) for x in chain) or \
            any(word in text for word in ("ConnectError", "ConnectTimeout", "Name or service not known")):
        return "no network: huggingface.co could not be reached"
    if any(isinstance(x, (errors.RepositoryNotFoundError, errors.EntryNotFoundError, FileNotFoundError))
           for x in chain) or "DatasetNotFoundError" in text:
        return f"the dataset or one of its files is not on the hub ({type(chain[0]).__name__})"
    status = next((x.response.status_code for x in chain if isinstance(x, errors.HfHubHTTPError)
                   and getattr(x, "response", None) is not None), None)
    if status is not None:
        return f"the hub answered HTTP {status}"
    return f"{type(chain[0]).__name__}: {(str(chain[0]).strip().splitlines() or [''])[0]}"


# --- splitting, tokenizing, writing -----------------------------------------------------------------------------

def write_bin(tokens, path):
    """Every row's ids, in row order, into path + ".tmp" (uint16); returns the token count."""
    lengths = tokens.with_format("numpy")["len"]
    total = int(np.sum(lengths, dtype=np.uint64))
    arr = np.memmap(path + ".tmp", dtype=np.uint16, mode="w+", shape=(total,))
    shards, idx = min(WRITE_SHARDS, len(tokens)), 0  # never more shards than rows
    for i in range(shards):
        batch = tokens.shard(num_shards=shards, index=i, contiguous=True).with_format("numpy")
        chunk = np.concatenate(batch["ids"])
        arr[idx:idx + len(chunk)] = chunk
        idx += len(chunk)
    arr.flush()
    del arr
    return total


def main(argv):
    c = configure(DEFAULTS, argv)
    if c["num_proc"] < 1:
        raise UserError(f"--num_proc must be at least 1, got {c['num_proc']}")
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise UserError("this needs the `datasets` package (pip install datasets)") from None
    docs = local_corpus(c["data_dir"], c["num_proc"]) if c["data_dir"] else hub_corpus(c["num_proc"])
    if len(docs) < 2:
        raise UserError(f"the corpus has {len(docs)} document(s): a train and a val split need at least 2")
    split = docs.train_test_split(test_size=VAL_FRACTION, seed=SPLIT_SEED, shuffle=True)
    split["val"] = split.pop("test")
    enc = gpt2_encoding()

    def tokenize(example):
        ids = enc.encode_ordinary(example["text"]) + [EOT]
        return {"ids": ids, "len": len(ids)}

    out_dir = resolve_path(c["out_dir"])
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for name, dset in split.items():
        tokens = dset.map(tokenize, remove_columns=["text"], desc=f"tokenizing {name}", num_proc=c["num_proc"])
        written[name] = (len(dset), write_bin(tokens, os.path.join(out_dir, f"{name}.bin")))
    for name in written:  # both files replace the old ones only once both are complete
        os.replace(os.path.join(out_dir, f"{name}.bin.tmp"), os.path.join(out_dir, f"{name}.bin"))
    for name, (rows, total) in written.items():
        print(f"{name}: {rows:,} documents, {total:,} tokens -> {os.path.join(out_dir, name + '.bin')}")


if __name__ == "__main__":
    with user_errors_exit("prepare.py"):
        main(sys.argv[1:])
