"""Perplexity on non-overlapping windows, for Hugging Face causal LMs and the gpt-2/ checkpoints.

A window is `seqlen` tokens: the special tokens the tokenizer prepends (`prefix`, such as a BOS; none with
--no-bos) and then consecutive tokens of the text. Each window is scored on its own (no context carried over),
the model predicting every text token but the first from the ones before. The prepended tokens are never targets,
and neither is the first text token (without a BOS nothing predicts it), so a window scores the same targets with
and without its BOS. Perplexity = exp(total NLL / number of predicted tokens), accumulated in float64 from
float32 log-probabilities whatever the model's dtype.

    prefix = special_tokens(tokenizer).prefix
    windows = eval_windows(get_eval_tokens(tokenizer, "gutenberg"), seqlen=512, nsamples=8, prefix=prefix)
    model_perplexity(model, windows, prefix=len(prefix))["ppl"]     # perplexity(hf_logits(model), ...) underneath
"""
import math

import torch
import torch.nn.functional as F

from lib.data import text_length, with_prefix
from lib.errors import UserError
from monkey_patch.weights import execution_device


def eval_windows(tokens: torch.Tensor, seqlen: int, nsamples: int | None = None, prefix=()) -> torch.LongTensor:
    """[nsamples, seqlen] windows of a [1, n] (or [n]) token stream: each the token ids `prefix` followed by
    seqlen - len(prefix) tokens of the stream, the text pieces non-overlapping.

    All windows when `nsamples` is None; otherwise `nsamples` windows spread evenly over the text (the first
    and the last included), so a small CPU sample is not all taken from the first document.
    """
    tokens = tokens.reshape(-1)
    if seqlen - len(prefix) < 2:
        after = f" after the {len(prefix)} special token(s) prepended" if prefix else ""
        raise UserError(f"--seqlen must be at least {2 + len(prefix)} (one text token to predict from another{after}), "
                        f"got {seqlen}")
    length = text_length(seqlen, prefix)
    n_windows = tokens.numel() // length
    if n_windows < 1 or (nsamples is not None and nsamples > n_windows):
        raise UserError(f"the evaluation text has {tokens.numel()} tokens = {n_windows} windows of {seqlen}; "
                        f"asked for {nsamples}: use fewer or shorter windows")
    if nsamples is not None and nsamples < 1:
        raise UserError(f"--nsamples must be at least 1, got {nsamples}")
    grid = tokens[: n_windows * length].view(n_windows, length)
    if nsamples is not None:
        grid = grid[torch.linspace(0, n_windows - 1, nsamples).round().long()]
    return with_prefix(grid, prefix)


def window_nll(logits: torch.Tensor, ids: torch.Tensor, prefix: int = 0) -> torch.Tensor:
    """Summed next-token NLL per window: logits [b, L-1, V] (of the inputs ids[:, :-1]) predict ids[:, 1:]; the
    first `prefix` predictions (those of the prepended special tokens' successors, up to the first text token) are
    not scored, so the targets are ids[:, prefix + 1:]."""
    predictions = logits[:, prefix:].float()
    targets = ids[:, prefix + 1:].to(predictions.device)
    nll = F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape).sum(dim=1)


@torch.no_grad()
def perplexity(logits_fn, windows: torch.Tensor, batch_size: int = 1, progress=None, prefix: int = 0) -> dict:
    """exp(mean token NLL) over `windows` [n, L]; `logits_fn(inputs [b, L-1]) -> logits [b, L-1, V]`, the
    inputs being each window without its last token. `prefix`: how many special tokens each window starts with
    (never targets, and neither is the text token after them: the targets are windows[:, prefix + 1:]).

    Returns {"ppl", "nll" (mean per token), "tokens" (predicted tokens), "windows", "window_nll" (mean per
    token of each window)}.
    """
    if windows.shape[1] - prefix < 2:
        raise UserError(f"windows of {windows.shape[1]} tokens with {prefix} prepended leave no token to predict")
    per_window = []
    starts = range(0, windows.shape[0], batch_size)
    for start in (progress(starts) if progress else starts):
        ids = windows[start: start + batch_size]
        per_window += window_nll(logits_fn(ids[:, :-1]), ids, prefix).double().cpu().tolist()
    predicted = windows.shape[1] - 1 - prefix
    mean_nll = sum(per_window) / (len(per_window) * predicted)
    return {
        "ppl": math.exp(mean_nll) if mean_nll < 700 else math.inf,
        "nll": mean_nll,
        "tokens": len(per_window) * predicted,
        "windows": len(per_window),
        "window_nll": [x / predicted for x in per_window],
    }


def model_perplexity(model, ids, prefix: int = 0, batch_size: int = 1) -> dict:
    """Perplexity of `model` on token ids: one sequence [L] or windows [n, L], each scored on its own. `model` is a
    Hugging Face causal LM, a gpt-2/model.py GPT, or what lib.models.load_model returns for either. `prefix`: how
    many special tokens every row starts with (1 where the tokenizer prepends a BOS, as Gemma's and LLaMA's do:
    len(lib.data.special_tokens(tokenizer).prefix)); they and the first text token are not targets. Runs inside any
    intervention or Capture context. Returns `perplexity`'s dict: ppl, nll (mean per token), tokens, windows,
    window_nll."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2:
        raise ValueError(f"ids must be [tokens] or [windows, tokens], got shape {tuple(ids.shape)}")
    net = getattr(model, "gpt", model)  # a gpt-2/ checkpoint as load_model returns it: its GPT gives every logit
    gpt2 = not hasattr(net, "get_input_embeddings") and hasattr(net, "lm_head")
    return perplexity(gpt2_logits(net) if gpt2 else hf_logits(net), ids.cpu(), batch_size=batch_size, prefix=prefix)


def hf_logits(model):
    """logits_fn of a Hugging Face causal LM (no attention mask: windows are full, unpadded)."""
    device = execution_device(model.get_input_embeddings())  # an offloaded embedding's weight is a meta tensor

    def logits_fn(ids):
        return model(input_ids=ids.to(device), use_cache=False).logits
    return logits_fn


def gpt2_logits(model):
    """logits_fn of a gpt-2/model.py GPT: it returns every position's logits only when given targets."""
    device = model.lm_head.weight.device

    def logits_fn(ids):
        ids = ids.to(device)
        return model(ids, targets=torch.full_like(ids, -1))[0]  # targets only switch on full logits
    return logits_fn


def summarize(measured: dict, baseline: dict | None = None) -> dict:
    """The numbers worth keeping; against a baseline on the same windows, also the paired change of the mean
    token NLL and its standard error over windows (how much of a difference the few windows can resolve)."""
    out = {k: (v if k != "ppl" or math.isfinite(v) else None) for k, v in measured.items() if k != "window_nll"}
    if baseline is not None:
        diffs = [a - b for a, b in zip(measured["window_nll"], baseline["window_nll"])]
        n = len(diffs)
        mean = sum(diffs) / n
        spread = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else float("nan")
        out.update(nll_change=mean, nll_change_stderr=spread / math.sqrt(n) if n > 1 else None)
    return out
