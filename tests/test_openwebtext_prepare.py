"""gpt-2/data/openwebtext/prepare.py end to end on local corpora written here (offline): the .bin files hold each
split's documents' GPT-2 ids with EOT after each, in the order of nanoGPT's split (0.05% val, seed 2357) computed
independently; failures are one-line errors naming their cause; every gpt-2 script answers --help."""
import io
import json
import lzma
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
GPT2 = ROOT / "gpt-2"
PREPARE = GPT2 / "data" / "openwebtext" / "prepare.py"
sys.path.insert(0, str(GPT2))
from lib.gpt2_data import EOT, gpt2_encoding  # noqa: E402


def run(tmp_path, *args, **env):
    """prepare.py in a subprocess whose datasets cache lies under tmp_path and which cannot reach the hub."""
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, str(PREPARE), *args], capture_output=True, text=True, env=env)


def tar_bytes(files: dict, compress: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w" + (f":{compress}" if compress else "")) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_corpus(folder: Path, n_parquet: int) -> list:
    """A corpus of every accepted kind; returns its documents as prepare.py must read them (path order)."""
    folder.mkdir()
    parquet = [f"Document {i}: the {['quick', 'slow', 'red'][i % 3]} fox number {i * 7} jumps. \u00e9\u4e2d"
               for i in range(n_parquet)]
    pq.write_table(pa.table({"text": parquet, "url": ["u"] * n_parquet}), folder / "a.parquet")
    jsonl = ["A line of JSON text.", "Another, with\n\n\n\nmany newlines\n"]
    (folder / "b.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(jsonl)) + "\n")
    (folder / "c.txt").write_text("  One plain text file.\n\n\n")
    # the hub's layout: a tar of xz-compressed tars of .txt files, a hidden file and a non-text member skipped
    inner = tar_bytes({"0001.txt": b"First archived document.", ".hidden.txt": b"skipped",
                       "0002.txt": b"Second\n\n\narchived document."}, compress="xz")
    (folder / "sub").mkdir()
    (folder / "sub" / "urlsf_subset00.tar").write_bytes(
        tar_bytes({"openwebtext/urlsf_subset00-1_data.xz": inner, "openwebtext/README": b"not a document"}))
    (folder / "notes.md").write_text("not part of the corpus")
    return parquet + ["A line of JSON text.", "Another, with\n\nmany newlines", "One plain text file.",
                      "First archived document.", "Second\n\narchived document."]


def expected_ids(docs, seed=2357, fraction=0.0005):
    """nanoGPT's split written out: a PCG64 permutation of the rows, the first ceil(fraction * n) of it val."""
    enc = gpt2_encoding()
    n_val = math.ceil(fraction * len(docs))
    order = np.random.default_rng(seed).permutation(len(docs))
    ids = lambda rows: [t for r in rows for t in enc.encode_ordinary(docs[r]) + [EOT]]
    return ids(order[n_val:]), ids(order[:n_val]), n_val


def read_bin(path):
    return np.fromfile(path, dtype=np.uint16).tolist()


def test_bins_are_the_documents_ids_in_the_split_order(tmp_path):
    docs = write_corpus(tmp_path / "corpus", n_parquet=2400)  # 2,407 documents: ceil(1.2) = 2 of them val
    out = tmp_path / "out"
    proc = run(tmp_path, f"--data_dir={tmp_path / 'corpus'}", f"--out_dir={out}", "--num_proc=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    train, val, n_val = expected_ids(docs)
    assert n_val == 2
    assert read_bin(out / "val.bin") == val and read_bin(out / "val.bin").count(EOT) == n_val
    assert read_bin(out / "train.bin") == train and read_bin(out / "train.bin").count(EOT) == len(docs) - n_val
    assert sorted(p.name for p in out.iterdir()) == ["train.bin", "val.bin"]  # no temp file left
    assert f"val: {n_val} documents" in proc.stdout


def test_a_corpus_smaller_than_the_write_shards_works(tmp_path):
    (tmp_path / "corpus").mkdir()
    texts = ["one small document", "two small documents", "three"]
    (tmp_path / "corpus" / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    proc = run(tmp_path, f"--data_dir={tmp_path / 'corpus'}", f"--out_dir={tmp_path / 'out'}", "--num_proc=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    train, val, _ = expected_ids(texts)
    assert read_bin(tmp_path / "out" / "train.bin") == train and read_bin(tmp_path / "out" / "val.bin") == val


def one_line_error(proc, *words):
    """A non-zero exit whose last stderr line is the error (progress bars may come before it), no traceback."""
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert last.startswith("prepare.py: error:") and all(w in last for w in words), last


def test_without_network_the_error_says_so(tmp_path):
    one_line_error(run(tmp_path, f"--out_dir={tmp_path / 'out'}"), "Hugging Face hub", "offline mode is on",
                   "--data_dir")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setup, words", [
    (lambda d: None, ["is not a folder"]),
    (lambda d: d.mkdir() or (d / "x.csv").write_text("a,b"), ["holds no .txt, .jsonl, .parquet, .tar files"]),
    (lambda d: d.mkdir() or (d / "x.jsonl").write_text('{"text": "fine"}\n{"txt": "no"}\n'), ['x.jsonl:2', '"text"']),
    (lambda d: d.mkdir() or pq.write_table(pa.table({"body": ["a", "b"]}), d / "x.parquet"), ['no "text" column']),
    (lambda d: d.mkdir() or (d / "x.txt").write_bytes(b"\xff\xfe bad"), ["x.txt: not UTF-8"]),
    (lambda d: d.mkdir() or (d / "x.txt").write_text("alone"), ["1 document(s)"]),
])
def test_bad_corpora_are_one_line_errors_and_write_nothing(tmp_path, setup, words):
    setup(tmp_path / "corpus")
    out = tmp_path / "out"
    one_line_error(run(tmp_path, f"--data_dir={tmp_path / 'corpus'}", f"--out_dir={out}", "--num_proc=1"), *words)
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize("script", ["data/openwebtext/prepare.py", "data/shakespeare/prepare.py",
                                    "data/backcopy/prepare.py", "train.py"])
def test_every_gpt2_script_answers_help(script):
    proc = subprocess.run([sys.executable, str(GPT2 / script), "--help"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr[-2000:]
    assert "python " in proc.stdout and len(proc.stdout.splitlines()) > 3
