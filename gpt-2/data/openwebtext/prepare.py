"""OpenWebText in GPT-2 BPE (needs internet and the `datasets` package): train.bin and val.bin, as nanoGPT.

    pip install datasets && python data/openwebtext/prepare.py [num_proc]

About 9B train tokens (17 GB) and 4M val tokens; 0.05% of the documents are held out as val (seed 2357).
"""
import os
import sys

import numpy as np

from lib.gpt2_data import EOT, gpt2_encoding

HERE = os.path.dirname(os.path.abspath(__file__))


def main(num_proc):
    try:
        from datasets import load_dataset
    except ImportError:
        print("prepare.py: error: this needs the `datasets` package (pip install datasets)", file=sys.stderr)
        sys.exit(2)
    enc = gpt2_encoding()
    try:
        # Why remote code: the hub's openwebtext is a loading script (it downloads and unpacks the corpus archives),
        # with no script-free copy of the same corpus; nanoGPT's data prep reads it the same way.
        ds = load_dataset("openwebtext", num_proc=num_proc, trust_remote_code=True)
    except Exception as e:  # no network, hub unreachable
        print(f"prepare.py: error: could not load openwebtext from the Hugging Face hub ({type(e).__name__})", file=sys.stderr)
        sys.exit(2)
    split = ds["train"].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    split["val"] = split.pop("test")

    def tokenize(example):
        ids = enc.encode_ordinary(example["text"]) + [EOT]
        return {"ids": ids, "len": len(ids)}

    for name, dset in split.items():
        tok = dset.map(tokenize, remove_columns=["text"], desc=f"tokenizing {name}", num_proc=num_proc)
        total = int(np.sum(tok["len"], dtype=np.uint64))
        path = os.path.join(HERE, f"{name}.bin")
        arr = np.memmap(path + ".tmp", dtype=np.uint16, mode="w+", shape=(total,))
        shards, idx = 1024, 0
        for i in range(shards):  # write in contiguous shards to bound memory
            batch = tok.shard(num_shards=shards, index=i, contiguous=True).with_format("numpy")
            chunk = np.concatenate(batch["ids"])
            arr[idx:idx + len(chunk)] = chunk
            idx += len(chunk)
        arr.flush()
        del arr
        os.replace(path + ".tmp", path)
        print(f"{name}: {total:,} tokens -> {path}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else max(1, (os.cpu_count() or 2) // 2))
