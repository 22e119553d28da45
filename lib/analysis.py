"""Detection rules the figure scripts share, and on-the-fly reducers built on them.

Activation outliers (``massive_entries``). An entry h[t, c] of a layer's [tokens, channels] tensor is an
outlier when all three hold:
  1. |h| > 100                                       (Sun et al., "Massive Activations")
  2. |h| > 1000 x median |h| over the whole tensor   (Sun et al.; a median, not the paper's mean)
  3. |h| > 2 x median over tokens of |h[:, c]|       (token-specific: not a channel large for every token)
The paper's own rule (max over channels > 1000 x mean |h|) is reported beside it. Why not the paper's rule
as is: on a short prompt one massive value inflates the mean it is compared to, and models with sandwich
norms (Gemma 2/3) grow some residual channels to thousands for EVERY token, so "large" alone does not single
out a token. On Gemma 3 270M and the Summer prompt the '.' token's channel 163 reaches 13,658 at layer 8
(1,090 x the median, 3.2 x the channel's median over tokens) while channel 163 of every other token is
3,000-5,000: rule 3 keeps the first, rejects the rest. Factors 1 and 2 are Sun et al.'s, factor 3 is ours.

Attention outliers (``attention_outlier_keys``): the paper's rule, cumulative attention >= 0.1 x seqlen, AND
at least twice what the key would receive under uniform causal attention (sum over queries i >= j of
1 / (i + 1)). On long sequences the second test never binds (2 x baseline is about 2 ln T << 0.1 T); on a
short prompt the first key is visible to every query and passes 0.1 x T by construction (Gemma 3 270M,
Summer prompt, layer 9: key 0 gets 1.87 of a uniform 2.83, the '.' key 3.42 of a uniform 1.00).
"""
import math

from lib import outliers

MASSIVE_ABS = 100.0
MASSIVE_FACTOR = 1000.0
TOKEN_FACTOR = 2.0
ATTENTION_FACTOR = 0.1
BASELINE_FACTOR = 2.0



def activation_rule(factor=MASSIVE_FACTOR, min_abs=MASSIVE_ABS, token_factor=TOKEN_FACTOR) -> str:
    return (f"|h| > {min_abs:g} and > {factor:g} x median|h| of the layer and "
            f"> {token_factor:g} x the channel's median |h| over tokens")


ACTIVATION_RULE = activation_rule()
ATTENTION_RULE = (f"cumulative attention >= {ATTENTION_FACTOR:g} x seqlen and >= {BASELINE_FACTOR:g} x the "
                  "uniform causal baseline sum_(i>=j) 1/(i+1)")


def massive_entries(h):
    """Activation outliers of one [tokens, channels] tensor under the rule in the module docstring."""
    return outliers.activation_outliers(h, rule="token", factor=MASSIVE_FACTOR, min_abs=MASSIVE_ABS,
                                        token_factor=TOKEN_FACTOR)


def paper_rule_tokens(h):
    """Tokens flagged by the paper's rule as written: max over channels > 1000 x mean |h|."""
    return outliers.activation_outliers(h, rule="mean")["tokens"]


def attention_outlier_keys(cumulative):
    """Keys with cumulative attention >= 0.1 x seqlen and >= 2 x the uniform causal baseline."""
    return outliers.attention_outlier_keys(cumulative, factor=ATTENTION_FACTOR, baseline_factor=BASELINE_FACTOR)


# --- reducers for Capture(reduce=...) -----------------------------------------------------------------------

def activation_summary(k=3):
    """Per sequence: top-k magnitudes with positions, the median, the outliers under massive_entries and the
    token-averaged kurtosis over channels (Bondarenko et al. 2023)."""
    def reduce(point, layer, tensor):
        rows = []
        for sequence in tensor:
            stats = outliers.topk_magnitudes(sequence, k)
            found = massive_entries(sequence)
            stats.update(outlier_tokens=found["tokens"], outlier_channels=found["channels"],
                         kurtosis=outliers.kurtosis(sequence, dim=-1).mean().item())
            rows.append(stats)
        return rows
    return reduce


# --- small helpers -------------------------------------------------------------------------------------------

def most_common(values, n=None):
    """Values sorted by how often they occur (ties: smaller value first)."""
    counts = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    ranked = sorted(counts, key=lambda v: (-counts[v], v))
    return ranked if n is None else ranked[:n]


def finite(x):
    """A float that JSON can hold (NaN/inf become None)."""
    x = float(x)
    return x if math.isfinite(x) else None
