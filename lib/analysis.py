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

Attention outliers (``excess_attention_keys``): the paper's rule (cumulative attention >= 0.1 x seqlen) made
to hold on every length. Only the queries that had a choice count (query 0 can only attend to key 0, so the
paper's sum hands key 0 a free 1), and a key must hold at least 0.1 more of that choosable mass than uniform
causal attention would give it (query i spreading 1 / (i + 1) over keys 0..i). Why an excess over uniform:
uniform attention must flag nothing, and a sink must be flagged on a prompt of any length. Under uniform
attention every key's excess is 0, on any length. On long sequences the uniform share of any key is at most
about (ln T) / T, so the rule is the paper's 0.1. On short prompts a ratio to uniform cannot do both: at 4
tokens uniform attention already gives key 0 36% of the choosable mass, so a key 0 holding half of it is only
1.39 x uniform, while a key just above uniform (1.1 x) must not pass; its excess is 0.14 against 0.04. A
floor on the share alone passes keys that merely collect their uniform share on short prompts. Gemma 3 270M,
Summer prompt, layer 9: the '.' key holds 0.43 of the choosable mass (0.30 above uniform) and is flagged;
keys 0 and 1 pass the paper's rule but hold 0.11 and 0.13, less than uniform would give them (0.23).
"""
import math

from lib import outliers

MASSIVE_ABS = 100.0
MASSIVE_FACTOR = 1000.0
TOKEN_FACTOR = 2.0
ATTENTION_FACTOR = 0.1  # the paper's 0.1 x seqlen; ours: the minimum excess over uniform of the choosable share
# The gpt-2 emergence verdict's ratio: a peak entry must be at least this many times the median |h| of its
# sequence. Small models' block outputs are O(1), so no absolute floor goes with it (Sun et al.'s |h| > 100 is
# an LLM scale): the interventions on a gpt-2/ model use this ratio and no floor unless told otherwise.
SYSTEMATIC_RATIO = 100.0


def activation_rule(factor=MASSIVE_FACTOR, min_abs=MASSIVE_ABS, token_factor=TOKEN_FACTOR) -> str:
    return (f"|h| > {min_abs:g} and > {factor:g} x median|h| of the layer and "
            f"> {token_factor:g} x the channel's median |h| over tokens")


ACTIVATION_RULE = activation_rule()
ATTENTION_RULE = (f"share of the attention of queries 1..T-1 >= {ATTENTION_FACTOR:g} above the share uniform causal "
                  "attention gives the key")
PAPER_ATTENTION_RULE = f"cumulative attention >= {ATTENTION_FACTOR:g} x seqlen (the paper's rule as written)"


def massive_entries(h, factor=MASSIVE_FACTOR, min_abs=MASSIVE_ABS):
    """Activation outliers of one [tokens, channels] tensor under the rule in the module docstring (a small
    model may need a lower factor and floor: the gpt-2 hypothesis test calls top-1/median >= 100 outliers)."""
    return outliers.activation_outliers(h, rule="token", factor=factor, min_abs=min_abs, token_factor=TOKEN_FACTOR)


def paper_rule_tokens(h):
    """Tokens flagged by the paper's rule as written: max over channels > 1000 x mean |h|."""
    return outliers.activation_outliers(h, rule="mean")["tokens"]


def excess_attention_keys(cumulative):
    """Keys under ATTENTION_RULE (module docstring): the excess-over-uniform rule."""
    return outliers.keys_above_uniform(cumulative, min_excess=ATTENTION_FACTOR)


def paper_attention_keys(cumulative):
    """Keys under PAPER_ATTENTION_RULE."""
    return outliers.paper_attention_keys(cumulative, factor=ATTENTION_FACTOR)


def rule_disagreement(cumulative, ours, paper):
    """One line saying which keys the two rules disagree on and why, or None when they agree."""
    if set(ours) == set(paper):
        return None
    share, uniform = outliers.choosable_shares(cumulative)
    parts = []
    for k in sorted(set(paper) - set(ours)):
        parts.append(f"key {k} passes the paper's 0.1 x seqlen but holds {share[k]:.2f} of the choosable mass, "
                     f"{share[k] - uniform[k]:+.2f} against uniform")
    for k in sorted(set(ours) - set(paper)):
        parts.append(f"key {k} holds {share[k]:.2f} of the choosable mass ({share[k] - uniform[k]:+.2f} against "
                     f"uniform) but its cumulative attention {float(cumulative[k]):.2f} is under 0.1 x seqlen")
    return "rules differ: " + "; ".join(parts)


# --- reducers for Capture(reduce=...) -----------------------------------------------------------------------

def activation_summary(k=3, factor=MASSIVE_FACTOR, min_abs=MASSIVE_ABS):
    """Per sequence: top-k magnitudes with positions, the median, the outliers under massive_entries and the
    token-averaged kurtosis over channels (Bondarenko et al. 2023)."""
    def reduce(point, layer, tensor):
        rows = []
        for sequence in tensor:
            stats = outliers.topk_magnitudes(sequence, k)
            found = massive_entries(sequence, factor, min_abs)
            stats.update(outlier_tokens=found["tokens"], outlier_channels=found["channels"],
                         kurtosis=outliers.token_kurtosis(sequence))
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
