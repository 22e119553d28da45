"""The paper's figures: name -> function(ctx) that draws and saves the figure and returns its numbers."""
from lib.paper_figures import existence, lifecycle, position

FIGURES = {
    "existence_activation_outliers_down": existence.activation_down,
    "existence_activation_outliers_layer": existence.activation_layer,
    "existence_attention_outliers": existence.attention,
    "existence_weight_outliers": existence.weights,
    "pos_activation_outliers_down": position.activation_down,
    "pos_activation_outliers_layer": position.activation_layer,
    "pos_attention_outliers": position.attention,
    "pos_weight_outliers": position.weights,
    "lifecycle_emergence": lifecycle.emergence,
    "lifecycle_spread": lifecycle.spread,
    "lifecycle_disappearance": lifecycle.disappearance,
}

DESCRIPTIONS = {
    "existence_activation_outliers_down": "3-D view of the down_proj input on the prompt at the first layer with outliers",
    "existence_activation_outliers_layer": "3-D view of a layer output on the prompt at the first layer with outliers",
    "existence_attention_outliers": "head-averaged attention on the prompt at the layer after the outliers appear",
    "existence_weight_outliers": "3-D view of down_proj columns, including the outlier column",
    "pos_activation_outliers_down": "per-layer top-1/2/3 and median of down_proj inputs over calibration text",
    "pos_activation_outliers_layer": "per-layer top-1/2/3 and median of layer outputs over calibration text, "
                                     "top channels, token categories and a 3-D view",
    "pos_attention_outliers": "cumulative attention, per-head outlier ratio and outlier-key categories",
    "pos_weight_outliers": "down_proj column ratios per layer, module scores and top columns",
    "lifecycle_emergence": "how the first activation outlier is written by the MLP",
    "lifecycle_spread": "how attention reads the outlier tokens (q, k, v norms, logits, probabilities)",
    "lifecycle_disappearance": "how the last layers cancel the outlier",
}

# The flag groups of lib.cli each figure uses (beyond the model and output flags); other flags are refused.
_PROMPT = ("prompt", "layer", "rule")
_CALIBRATION = ("calibration", "layer", "rule")
FIGURE_FLAGS = {
    "existence_activation_outliers_down": _PROMPT,
    "existence_activation_outliers_layer": _PROMPT,
    "existence_attention_outliers": _PROMPT,
    "existence_weight_outliers": _PROMPT,
    "pos_activation_outliers_down": _CALIBRATION,
    "pos_activation_outliers_layer": _CALIBRATION,
    "pos_attention_outliers": ("calibration",),
    "pos_weight_outliers": (),
    "lifecycle_emergence": _PROMPT,
    "lifecycle_spread": _PROMPT + ("head",),
    "lifecycle_disappearance": _PROMPT,
}
