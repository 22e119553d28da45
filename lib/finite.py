"""Float range: every forward's block outputs and logits must be finite, and how close the model's largest |h| comes
to the largest finite value of float16, of bfloat16 and of the run's own dtype.

    with guard(model):                     # around any forwards: a non-finite block output or logit raises
        model(ids)
    headroom(model, run, batches, dtype)   # the largest |h| of the block outputs against each dtype's range

A block output (or the logits) that is not finite raises a UserError, one line naming the first layer, token and
channel that overflowed, the run's dtype and the dtypes whose range would hold the value, so that no figure, table
or JSON is written from inf or nan. Gemma 3's massive activations reach about 1e5, above float16's 65,504.
"""
from contextlib import ExitStack, contextmanager

import torch

from lib.errors import UserError
from lib.gpt2_checkpoints import as_lm
from lib.text_numbers import sig
from monkey_patch import Edit, ModelView

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def largest_finite(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)


def wider(dtype: torch.dtype) -> list[torch.dtype]:
    """The dtypes of DTYPES whose largest finite value exceeds `dtype`'s."""
    return [d for d in DTYPES if largest_finite(d) > largest_finite(dtype)]


def _holds(dtype: torch.dtype) -> str:
    """What to run instead when `dtype` overflowed."""
    others = wider(dtype)
    if not others:
        return f"no dtype here has a wider range than {dtype_name(dtype)} ({largest_finite(dtype):.2g})"
    names = " and ".join(dtype_name(d) for d in others)
    return (f"{names} hold values up to {largest_finite(others[0]):.2g}: run with "
            + " or ".join(f"--dtype {dtype_name(d)}" for d in others))


class Guard:
    """Edit functions that only look (monkey_patch.Edit) and raise on the first non-finite block output or logit
    (see the module docstring)."""

    def __init__(self, token_text=None):
        self.token_text = token_text  # id -> token string, for the message
        self.ids = None               # the input ids of the forward under way (the input_ids point)

    def input(self, ids, layer=None):
        self.ids = ids if torch.is_tensor(ids) and not ids.is_floating_point() else None

    def _token(self, batch: int, token: int) -> str:
        if self.ids is None or self.token_text is None or self.ids.dim() != 2:
            return str(token)
        return f"{token} ({self.token_text(int(self.ids[batch, token]))!r})"

    def block(self, h, layer: int) -> None:
        if not torch.is_tensor(h) or bool(torch.isfinite(h).all()):
            return
        batch, token, channel = first_not_finite(h)
        value, dtype = float(h[batch, token, channel]), h.dtype
        raise UserError(f"layer {layer}'s output is {value} at token {self._token(batch, token)}, channel "
                        f"{channel}: it overflowed {dtype_name(dtype)} (largest finite value "
                        f"{largest_finite(dtype):,.0f}); {_holds(dtype)}")

    def logits(self, output, layer=None) -> None:
        if bool(torch.isfinite(output).all()):
            return
        batch, token, entry = first_not_finite(output)
        raise UserError(f"the logits are {float(output[batch, token, entry])} at token {self._token(batch, token)}, "
                        f"vocabulary entry {entry}, in {dtype_name(output.dtype)} (largest finite value "
                        f"{largest_finite(output.dtype):,.0f}); {_holds(output.dtype)}")


def first_not_finite(x: torch.Tensor) -> tuple[int, ...]:
    """(batch, token, channel) of the first entry of a [b, T, C] tensor that is not finite (in token order)."""
    return tuple(int(i) for i in torch.nonzero(~torch.isfinite(x))[0])


@contextmanager
def guard(model, token_text=None):
    """Within the context every forward of `model` (a supported family or a gpt-2/ GPT) raises a UserError at its
    first decoder layer output or logit that is not finite. `token_text(id) -> str` names the token."""
    model = as_lm(model)
    checker = Guard(token_text)
    supported = ModelView(model).supported_points()
    with ExitStack() as stack:
        if "input_ids" in supported:
            stack.enter_context(Edit(model, "input_ids", checker.input))
        if "logits" in supported:
            stack.enter_context(Edit(model, "logits", checker.logits))
        stack.enter_context(Edit(model, "resid_post", checker.block))
        yield checker


@torch.no_grad()
def headroom(model, run, batches, dtype: torch.dtype) -> dict:
    """The largest |h| over every decoder layer output of `run(ids)` for each ids in `batches` (layer, token and
    channel 0-based), against the largest finite value of float16, bfloat16 and the run's `dtype`."""
    best = {}

    def record(h, layer):
        h = h.detach()
        flat = h.abs().reshape(-1)
        i = int(flat.argmax())
        value = float(flat[i])
        if not best or value > best["largest_abs"]:
            _, token, channel = torch.unravel_index(torch.tensor(i), h.shape)
            best.update(largest_abs=value, layer=layer, token=int(token), channel=int(channel))

    with Edit(as_lm(model), "resid_post", record):
        for ids in batches:
            run(ids)
    return headroom_record(best, dtype)


def headroom_record(best: dict, dtype: torch.dtype) -> dict:
    """`best` (largest_abs, layer, token, channel) against each dtype's largest finite value."""
    dtypes = list(dict.fromkeys([torch.float16, torch.bfloat16, dtype]))
    value = best["largest_abs"]
    limits = {dtype_name(d): largest_finite(d) for d in dtypes}
    return {**best, "run_dtype": dtype_name(dtype), "largest_finite": limits,
            "share_of_largest_finite": {name: value / limit for name, limit in limits.items()},
            "fits": {name: value <= limit for name, limit in limits.items()}, "text": headroom_text(best, limits)}


def headroom_text(best: dict, limits: dict) -> str:
    value, f16 = best["largest_abs"], limits["float16"]
    where = f"layer {best['layer']}, token {best['token']}, channel {best['channel']}"
    verdict = (f"{sig(value / f16, 3)} x float16's largest finite value {f16:,.0f}: it overflows in float16"
               if value > f16 else f"{sig(value / f16, 3)} of float16's largest finite value {f16:,.0f}")
    return f"largest |h| {sig(value)} ({where}): {verdict}; bfloat16's is {limits['bfloat16']:.3g}"
