"""Tests for lib.data: token batches, local sources, the offline Gutenberg corpus, online-source errors."""
import json
import os

import pytest
import torch

from lib import data
from lib.errors import UserError


class CharTokenizer:
    """One token per character: an independent tokenization that is trivial to check."""

    def encode(self, text):
        return [ord(c) for c in text]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"Document {i}. " + "Summer is warm. Winter is cold.\n" * 5 for i in range(20)))
    return path


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty project cache, and a `datasets.load_dataset` that fails as it does without network."""
    import datasets

    def no_network(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub (mocked)")

    monkeypatch.setenv("SYSTEMATIC_OUTLIERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "load_dataset", no_network)
    return tmp_path / "cache"


def test_same_seed_same_batch_other_seed_other_batch(text_file):
    def draw(seed):
        return data.get_data(CharTokenizer(), nsamples=8, seqlen=16, source=str(text_file), seed=seed)

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_rows_are_distinct_consecutive_chunks_of_the_token_stream(text_file):
    seqlen = 24
    stream = torch.tensor(CharTokenizer().encode(text_file.read_text()))
    batch = data.get_data(CharTokenizer(), nsamples=10, seqlen=seqlen, source=str(text_file), seed=3)
    assert batch.shape == (10, seqlen) and batch.dtype == torch.long
    chunks = stream[:len(stream) // seqlen * seqlen].view(-1, seqlen)
    starts = []
    for row in batch:
        matches = (chunks == row).all(dim=1).nonzero().flatten().tolist()
        assert matches, "a row is not an aligned chunk of the token stream"
        starts.append(matches[0])
    assert len(set(starts)) == len(starts)


def test_folder_of_text_files(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second " * 40)
    (folder / "a.txt").write_text("first " * 40)
    (folder / "sub" / "c.txt").write_text("third " * 40)
    (folder / "notes.md").write_text("not text data")
    text = data.load_text(str(folder))
    assert text == "\n\n".join(["first " * 40, "second " * 40, "third " * 40])
    assert data.get_data(CharTokenizer(), nsamples=5, seqlen=100, source=str(folder)).shape == (5, 100)


def test_too_little_text_is_an_error_not_a_short_batch(text_file):
    n_tokens = len(text_file.read_text())
    with pytest.raises(UserError, match=rf"{n_tokens} tokens = {n_tokens // 512} chunks of 512; asked for 1000"):
        data.get_data(CharTokenizer(), nsamples=1000, seqlen=512, source=str(text_file))


def test_missing_path_and_empty_folder_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        data.get_data(CharTokenizer(), 1, 8, source=str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="no .txt files"):
        data.load_text(str(tmp_path))


@pytest.mark.parametrize("nsamples, seqlen", [(0, 8), (1, 0), (-2, 8)])
def test_nonpositive_sizes_are_user_errors(text_file, nsamples, seqlen):
    with pytest.raises(UserError, match="at least one"):
        data.get_data(CharTokenizer(), nsamples, seqlen, source=str(text_file))


def test_unknown_split_is_a_user_error(text_file):
    with pytest.raises(UserError, match="unknown split"):
        data.load_text(str(text_file), split="train")


def test_boilerplate_is_stripped():
    raw = ("The Project Gutenberg EBook of Something\r\nlicence words\r\n"
           "*** START OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***\r\n\r\nThe play itself.\r\n\r\n"
           "End of the Project Gutenberg EBook of Something\r\n*** END OF THIS PROJECT GUTENBERG EBOOK ***\r\n"
           "Section 1. General Terms of Use\r\n")
    assert data.strip_gutenberg_boilerplate(raw) == "The play itself."
    assert data.strip_gutenberg_boilerplate("\ufeffNo header here.\n") == "No header here."


def test_gutenberg_splits_are_disjoint_clean_and_one_edition_per_work():
    calib = dict(data.gutenberg_documents("calib"))
    held_out = dict(data.gutenberg_documents("eval"))
    assert calib and held_out
    assert set(held_out) == set(data.GUTENBERG_EVAL_WORKS)
    assert not set(calib) & set(held_out)
    assert not any(name.endswith("_gut_f") for name in calib)
    calib_text = data.load_text("gutenberg", "calib")
    for text in held_out.values():
        assert text and text[:2000] not in calib_text
    for text in (calib_text, data.load_text("gutenberg", "eval")):
        assert "project gutenberg" not in text.lower()


def test_gutenberg_is_the_default_source():
    batch = data.get_data(CharTokenizer(), nsamples=3, seqlen=64)
    assert batch.shape == (3, 64)
    eval_tokens = data.get_eval_tokens(CharTokenizer())
    assert eval_tokens.shape == (1, len(data.load_text("gutenberg", "eval")))


@pytest.mark.parametrize("source", ["redpajama", "wikitext", "c4", "pg19"])
def test_online_source_without_network_names_the_offline_default(offline_cache, source):
    with pytest.raises(UserError, match="needs internet.*'gutenberg'"):
        data.get_data(CharTokenizer(), 1, 8, source=source)
    assert not (offline_cache / "text").exists()


def test_redpajama_has_no_eval_split(offline_cache):
    with pytest.raises(UserError, match="no held-out split"):
        data.get_eval_tokens(CharTokenizer(), "redpajama")


def test_online_text_is_cached_after_the_first_download(offline_cache, monkeypatch):
    import datasets

    requests = []

    def fake_wikitext(path, name=None, split=None, **kwargs):
        requests.append((path, name, split))
        return datasets.Dataset.from_dict({"text": [" = Title = \n", " Some text .\n"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_wikitext)
    assert data.load_text("wikitext", "eval") == " = Title = \n\n\n Some text .\n"
    assert requests == [("Salesforce/wikitext", "wikitext-2-raw-v1", "test")]
    assert data.load_text("wikitext", "eval") == " = Title = \n\n\n Some text .\n"
    assert len(requests) == 1


def _tiny_hf_tokenizer(vocab_size):
    """A byte-level BPE fast tokenizer trained on a few lines, with a short model_max_length."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["Summer is warm. Winter is cold.\n", "Document one, document two."] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=16)


def test_hf_tokenizer_matches_whole_text_encoding_without_warning_and_caches(text_file, offline_cache, monkeypatch, capfd):
    monkeypatch.setattr(data, "PIECE_CHARS", 100)  # force many pieces
    small, large = _tiny_hf_tokenizer(262), _tiny_hf_tokenizer(280)
    text = text_file.read_text()
    tokens = data.get_eval_tokens(small, str(text_file))
    assert tokens[0].tolist() == small.backend_tokenizer.encode(text, add_special_tokens=False).ids
    assert "longer than the specified maximum" not in capfd.readouterr().err
    assert len(list((offline_cache / "tokens").glob("*.npy"))) == 1

    def must_not_tokenize(*args):
        raise AssertionError("tokenized again despite the cache")

    with monkeypatch.context() as patch:
        patch.setattr(data, "tokenize", must_not_tokenize)
        assert torch.equal(data.get_eval_tokens(small, str(text_file)), tokens)
    # Another tokenizer never gets the first one's cached tokens.
    other = data.get_eval_tokens(large, str(text_file))
    assert other[0].tolist() == large.backend_tokenizer.encode(text, add_special_tokens=False).ids
    assert other.shape != tokens.shape
    assert len(list((offline_cache / "tokens").glob("*.npy"))) == 2


def test_atomic_writes_keep_the_old_file_on_error_and_get_plain_permissions(tmp_path):
    from lib.files import write_atomically, write_json
    path = tmp_path / "result.json"
    write_json(path, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask  # not mkstemp's owner-only 0600

    def fail(f):
        f.write("half a resu")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        write_atomically(path, fail)
    assert json.loads(path.read_text()) == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
