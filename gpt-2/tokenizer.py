"""The GPT-2 BPE (tiktoken "gpt2"), built offline from the ranks file shipped in the openai-whisper sdist."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # repo root, for lib/

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = 50256


def gpt2_encoding():
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    try:
        from lib.sdist import sdist_files
        path = sdist_files("openai-whisper", "20250625", "whisper/assets/gpt2.tiktoken")[0]
    except Exception:  # no PyPI either: let tiktoken try its own download
        return tiktoken.get_encoding("gpt2")
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(path)),
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=50257)
