"""Training batches from the token datasets on disk (lib/gpt2_data.py: data/<name>/{train,val}.bin and meta.pkl).

For datasets made of independent sequences (meta.pkl's seq_len: the synthetic task) every batch row is one
whole sequence starting at its first token (BOS), never a window that straddles two sequences.
"""
import numpy as np
import torch

from lib.backcopy_task import sample_design
from lib.errors import UserError
from lib.gpt2_data import data_dir, load_meta, open_split


class Batches:
    """Random (x, y) batches from one split, drawn with its own torch.Generator (saved in checkpoints)."""

    def __init__(self, dataset, split, batch_size, block_size, seed, device="cpu"):
        self.data = open_split(dataset, split)
        self.seq_len = load_meta(dataset).get("seq_len")
        self.batch_size, self.block_size, self.device = batch_size, block_size, device
        self.gen = torch.Generator().manual_seed(seed)
        if self.seq_len is not None and block_size + 1 > self.seq_len:
            raise UserError(f"block_size {block_size} needs sequences of {block_size + 1} tokens; "
                            f"{dataset} has {self.seq_len}")
        if self.seq_len is None and len(self.data) <= block_size + 1:
            raise UserError(f"{split} split of {dataset} has only {len(self.data)} tokens, block_size is {block_size}")

    def starts(self):
        if self.seq_len is not None:
            n_seq = len(self.data) // self.seq_len
            return torch.randint(n_seq, (self.batch_size,), generator=self.gen) * self.seq_len
        return torch.randint(len(self.data) - self.block_size - 1, (self.batch_size,), generator=self.gen)

    def next(self):
        ix = self.starts().tolist()
        T = self.block_size
        x = torch.stack([torch.from_numpy(self.data[i:i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(self.data[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
        if self.device.startswith("cuda"):
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def get_state(self):
        return self.gen.get_state()

    def set_state(self, state):
        self.gen.set_state(state.cpu())  # a checkpoint loaded with map_location may hold it on the GPU

    def available(self, length):
        """How many sequences of `length` tokens sequences() can give."""
        return len(self.data) // (self.seq_len if self.seq_len is not None else length)

    def sequences(self, n, length):
        """The first n sequences (aligned datasets) or n consecutive chunks, each `length` tokens long."""
        step = self.seq_len if self.seq_len is not None else length
        if n * step > len(self.data) or length > step:
            raise UserError(f"not enough data for {n} sequences of {length} tokens")
        return torch.stack([torch.from_numpy(self.data[i * step:i * step + length].astype(np.int64)) for i in range(n)])


class FreshBatches:
    """Training batches drawn afresh from the synthetic task in meta.pkl (lib/backcopy_task.py), so that nothing
    repeats. Sequences are generated `chunk` batches at a time; the state (the generator's state at the start of
    the current chunk and the position in it) is saved in checkpoints, so a resumed run sees the same batches."""

    def __init__(self, dataset, batch_size, block_size, seed, device="cpu", chunk=256):
        self.meta = load_meta(dataset)
        if "bigram" not in self.meta:
            raise UserError(f"fresh_data needs a synthetic task: {data_dir(dataset)}/meta.pkl has no bigram table "
                            "(run data/backcopy/prepare.py)")
        self.batch_size, self.block_size, self.device, self.chunk = batch_size, block_size, device, chunk
        self.rng = np.random.default_rng(seed)
        self._fill()

    def _fill(self):
        self.chunk_state, self.index = self.rng.bit_generator.state, 0
        seqs = sample_design(self.chunk * self.batch_size, self.block_size + 1, self.meta, self.rng)
        self.buffer = torch.from_numpy(seqs).view(self.chunk, self.batch_size, self.block_size + 1)

    def next(self):
        if self.index == self.chunk:
            self._fill()
        s = self.buffer[self.index].to(self.device)
        self.index += 1
        return s[:, :-1], s[:, 1:]

    def get_state(self):
        return dict(chunk_state=self.chunk_state, index=self.index)

    def set_state(self, state):
        self.rng.bit_generator.state = state["chunk_state"]
        self._fill()
        self.index = state["index"]
