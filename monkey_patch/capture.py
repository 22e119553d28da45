"""Capture named internals of a Hugging Face causal LM, per layer, with forward hooks and the attention registry.

    with Capture(model, ["resid_post", "mlp.down_in", "attn.pattern"], layers=[1, 2]) as cap:
        model(input_ids)
    cap["resid_post", 1]          # tensor [batch, tokens, hidden], float32 on CPU

Layers are 0-based. Capture points (TransformerLens-like names; per-head tensors are [batch, pos, head, d_head],
attention scores/pattern are [batch, head, query, key]). Of the whole model (no layer: `cap["embed"]`):

    input_ids                   the token ids the input embedding receives [batch, tokens] (kept as integers)
    embed                       the input embedding's output (before any scaling or position embedding the model
                                adds outside that module)
    ln_final                    the final norm's output
    logits                      the output head's output (before any final soft-capping)

Per layer:

    resid_pre, resid_post       decoder layer input and output (the residual stream)
    ln1, ln2                    attention-norm and MLP-norm outputs (ln2 is ln1 in parallel blocks)
    attn_in                     the attention module's input (what its q/k/v projections read)
    attn.q, attn.k, attn.v      per-head projections before rotary embedding (after q/k norms where present)
    attn.q_rot, attn.k_rot      after rotary embedding, as attention sees them
    attn.scores, attn.pattern   scaled q.k logits (masked entries -inf) and softmax probabilities
    attn.z, attn_out            per-head attention output (input of the output projection) and its output
    mlp_in                      the MLP's input (what its first projections read)
    mlp.gate_out, mlp.up_out, mlp.act_out, mlp.down_in, mlp.down_out
                                gated MLP internals; non-gated MLPs have no gate, up = fc1, down = fc2
    mlp_out                     what the MLP writes to the residual: mlp.down_out, or after the norm that follows
                                it in sandwich-norm families (Gemma 2/3)
    attn.scale                  a per-token, per-head output scale [batch, pos, head] (gpt-2's ca_softmax S(x))
    attn.extra                  attention on an always-visible extra key k' [batch, head, query] (gpt-2's
                                attn_bias, softmax1); attn.pattern then holds the attention on the tokens only

Of the attention points, families outside transformers' registry serve attn.pattern (and attn.extra) only; gpt-2's
GPT, whose explicit path has hook points, attn.scores too: the tokens' scores as its explicit path makes them
(q.k / sqrt(d), -inf after the query; an extra key k' left out; sigmoid's before its - log T).

`cap[point, layer]` is the tensor of the latest forward call. `reduce(point, layer, tensor)` turns each captured
tensor into something small on the fly instead (top-k, medians, attention column sums: see lib.reducers);
`cap.reduced(point, layer)` lists its results, one per forward call. `cap.clear()` forgets what was captured.
The same point names are edited with monkey_patch.edit.Edit (a function that returns the replacement).
Every layer's attention output comes from the model's own kernel, called exactly as in a plain forward, so a
capture changes no number downstream. On the requested layers attn.scores and attn.pattern are made beside it
the way the family's eager attention makes them (scaled q.k in the model's dtype, soft-capped where the family
does, eager's additive mask, softmax in float32), chunk by chunk over the keys each chunk's queries see. Where
attn.pattern's reducer adds up over queries (column sums), each chunk is reduced at once and the whole map is
never held. Leaving the context removes every hook and restores the attention implementation.
"""
from contextlib import ExitStack, contextmanager
from typing import NamedTuple

import torch
from torch import nn

from monkey_patch.adapters import FAMILIES, Family, get_submodule, head_counts, split_qkv
from monkey_patch.hook_points import explicit_attention, replaced
from monkey_patch.routing import CaptureError, additive_mask, model_configs, route
from monkey_patch.sites import LAYERLESS, Hooks, Site, input_embeddings, layer_site, model_site, output_head
from monkey_patch.weights import matrix

POINTS = ("resid_pre", "resid_post", "ln1", "ln2", "attn_in", "attn.q", "attn.k", "attn.v", "attn.q_rot",
          "attn.k_rot", "attn.scores", "attn.pattern", "attn.z", "attn_out", "mlp_in", "mlp.gate_out", "mlp.up_out",
          "mlp.act_out", "mlp.down_in", "mlp.down_out", "mlp_out", "attn.scale", "attn.extra") + LAYERLESS
REGISTRY_POINTS = ("attn.q_rot", "attn.k_rot", "attn.scores", "attn.pattern")
CHUNK_ELEMENTS = 2**20  # attention-map entries made at once on a CPU (float32: 4 MiB, so each step stays in cache)
CHUNK_ELEMENTS_GPU = 2**25  # on a GPU, where fewer, larger kernels are faster (see _chunk_plan)
CHUNK_QUERIES = 256  # queries per chunk at most: smaller chunks skip more of a causal map's masked half

_OPEN: list = []  # the captures open now


@contextmanager
def paused(model: nn.Module):
    """Within the context, the captures open on `model` (or on a model that holds it, or that it holds) record
    nothing: for the extra forwards an intervention runs for itself (finding the sinks before masking them), so
    that a user's capture sees only the user's own forwards."""
    def related(other):
        return any(m is model for m in other.modules()) or any(m is other for m in model.modules())
    captures = [c for c in _OPEN if related(c.view.model)]
    for capture in captures:
        capture._paused = True
    try:
        yield
    finally:
        for capture in captures:
            capture._paused = False


class ModelView:
    """A model seen through its family's adapter (monkey_patch.adapters): `num_layers`, `layers` (the decoder
    blocks), `num_heads`, `num_kv_heads`, `head_dim`, each layer's submodules by role (`module`, `attn`, `mlp`), its
    projection weights as [out, in] matrices (`weight`) and the capture points the family serves
    (`supported_points`). Raises CaptureError for a family outside the adapter table."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.model_type = getattr(self.config, "model_type", None)
        if self.model_type not in FAMILIES:
            raise CaptureError(f"unsupported architecture {self.model_type!r}: "
                               f"supported families are {', '.join(sorted(FAMILIES))}")
        self.family: Family = FAMILIES[self.model_type]
        self.layers = get_submodule(model, self.family.layers)
        if self.layers is None:
            raise CaptureError(f"{self.model_type}: no decoder layers at {self.family.layers!r}")
        self.num_layers = len(self.layers)
        self.num_heads, self.num_kv_heads, self.head_dim = head_counts(self.config)

    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise CaptureError(f"layer {layer} out of range: the model has layers 0..{self.num_layers - 1}")
        return layer

    def attn(self, layer: int) -> nn.Module:
        return get_submodule(self.layers[layer], self.family.attn)

    def mlp(self, layer: int) -> nn.Module:
        f = self.family
        return self.layers[layer] if f.mlp is None else get_submodule(self.layers[layer], f.mlp)

    def module(self, layer: int, role: str) -> nn.Module | None:
        """Submodule of a layer by role: ln1, ln2, q, k, v, qkv, q_norm, k_norm, o, gate, up, gate_up, down, act."""
        f, block = self.family, self.layers[layer]
        if role == "ln1":
            return get_submodule(block, f.ln1)
        if role == "ln2":  # parallel blocks feed the MLP from the attention norm
            return get_submodule(block, f.ln2) or get_submodule(block, f.ln1)
        if role in ("q", "k", "v", "qkv", "o"):
            return get_submodule(self.attn(layer), getattr(f, role))
        if role in ("q_norm", "k_norm"):
            names = f.qk_norm
            return None if names is None else get_submodule(self.attn(layer), names[role == "k_norm"])
        if f.down is None:
            return None
        return get_submodule(self.mlp(layer), getattr(f, role))

    def final_norm(self) -> nn.Module:
        return get_submodule(self.model, self.family.final_norm)

    def weight(self, layer: int, role: str) -> torch.Tensor:
        """Weight of a projection as [out_features, in_features] (GPT-2's Conv1D stores it transposed).

        Roles: q, k, v, o, gate, up, down; q/k/v and gate/up are cut out of fused projections. Where accelerate
        offloaded the module, a copy loaded on its execution device (freed when dropped: read one at a time);
        bitsandbytes weights dequantized; other packed weights raise PackedWeights (monkey_patch.weights).
        """
        f = self.family
        if role in ("q", "k", "v") and f.qkv is not None:
            w = matrix(self.module(layer, "qkv"))  # [3 * ..., hidden]: split rows like the activations
            q, k, v = split_qkv(w.T.unsqueeze(0), f.qkv_layout, self.config)
            part = {"q": q, "k": k, "v": v}[role][0]  # [hidden, heads, d]
            return part.reshape(part.shape[0], -1).T
        if role in ("gate", "up") and f.gate_up is not None:
            gate, up = matrix(self.module(layer, "gate_up")).chunk(2, dim=0)
            return gate if role == "gate" else up
        module = self.module(layer, role)
        if module is None:
            raise CaptureError(f"{self.model_type} has no {role!r} projection the adapter can reach")
        return matrix(module)

    def supported_points(self) -> list[str]:
        """Every capture point this family serves."""
        f, points = self.family, list(POINTS)
        if f.down is None:
            points = [p for p in points if not p.startswith("mlp")]
        elif f.gate is None and f.gate_up is None:
            points.remove("mlp.gate_out")
        if not f.registry:
            points = [p for p in points if p not in ("attn.q_rot", "attn.k_rot", "attn.scores")
                      or p in hook_point_attention(f)]
        if not self.has_scale():
            points.remove("attn.scale")
        if not self.has_extra_key():
            points.remove("attn.extra")
        if input_embeddings(self.model) is None:
            points = [p for p in points if p not in ("input_ids", "embed")]
        if self.final_norm() is None:
            points.remove("ln_final")
        if output_head(self.model) is None:
            points.remove("logits")
        return points

    def has_scale(self) -> bool:
        return get_submodule(self.attn(0), self.family.scale) is not None

    def has_extra_key(self) -> bool:
        f = self.family
        return f.extra_key is not None and bool(getattr(self.attn(0), f.extra_key, False))

    def weight_roles(self) -> list[str]:
        roles = ["q", "k", "v", "o"]
        if self.family.gate is not None or self.family.gate_up is not None:
            roles.append("gate")
        if self.family.down is not None:
            roles += ["up", "down"]
        return roles


def check_points(view: ModelView, points) -> None:
    """Raise CaptureError for an unknown point or one this model's family cannot serve."""
    unknown = [p for p in points if p not in POINTS]
    if unknown:
        raise CaptureError(f"unknown capture point(s) {unknown}: choose from {', '.join(POINTS)}")
    f = view.family
    for point in points:
        if point.startswith("mlp") and f.down is None:
            raise CaptureError(f"{point}: MLP internals of {view.model_type} (mixture of experts) are not supported")
        if point == "mlp.gate_out" and f.gate is None and f.gate_up is None:
            raise CaptureError(f"{point}: {view.model_type} has a non-gated MLP (use mlp.up_out for fc1)")
        if point == "attn.scale" and not view.has_scale():
            raise CaptureError(f"{point}: this {view.model_type} model's attention has no output scale "
                               "(only gpt-2's ca_softmax has one)")
        if point == "attn.extra" and not view.has_extra_key():
            raise CaptureError(f"{point}: this {view.model_type} model's attention has no extra key "
                               "(only gpt-2's attn_bias and softmax1 have one)")
        served = ("attn.pattern",) + hook_point_attention(f)
        if point in REGISTRY_POINTS and not f.registry and point not in served:
            raise CaptureError(f"{point}: {view.model_type} does not use transformers' attention registry; "
                               f"only {' and '.join(served)} among the attention internals can be captured")
        if point in LAYERLESS and point not in view.supported_points():
            raise CaptureError(f"{point}: this {view.model_type} model has no module for it")


def hook_point_attention(family: Family) -> tuple:
    """The attention points outside the registry that only hook points serve (attn.scores, on the explicit path)."""
    return ("attn.scores",) if family.scores is not None else ()


def layer_keys(view: ModelView, points, layers) -> list[tuple[str, int | None]]:
    """(point, layer) for every point at every one of `layers` (0-based; None: all), the layer-less points once with
    layer None."""
    if layers is None:
        layers = range(view.num_layers)
    layers = [view.check_layer(layer) for layer in ([layers] if isinstance(layers, int) else layers)]
    return ([(p, None) for p in points if p in LAYERLESS]
            + [(p, layer) for layer in layers for p in points if p not in LAYERLESS])


class Capture:
    """Capture named internals of `model` in every forward run inside the `with` block.

    Args:
        model: a Hugging Face causal LM of a supported family (`ModelView`), or a gpt-2/ checkpoint loaded with
            lib.models.load_model.
        points: a capture point or a list of them (`POINTS`; the module docstring says what each holds).
        layers: 0-based layer indices (an int or a list; default: every layer), as the figure scripts' --layer and
            every JSON count them.
        reduce: None, or `reduce(point, layer, tensor) -> list` with one small result per sequence of the batch
            (lib.reducers has top-k/median, attention column sums, the attention a key receives from later
            queries, each token's max |h|, and `by_point` to pick one per point).

    `cap[point, layer]` (`cap[point]` for a point of the whole model, such as `embed`): the tensor of the latest
    forward (float32, CPU, detached). With `reduce`, `cap.reduced(point, layer)`: a list with one entry per forward
    call, each what `reduce` returned (by convention a list with one entry per sequence). `cap.keys()`: the
    (point, layer) pairs captured so far; `cap.clear()` forgets them.
    Captured tensors are detached: a forward inside a capture backpropagates as it would outside it. Attention
    edits (lib.interventions' key masks, the scale test) compose with a capture in either nesting order: the
    captured maps are those of the edited model. Raises CaptureError for an unknown point, a layer out of range, a
    point the family cannot serve or a second capture of attention points on the same model.

    >>> import torch, transformers
    >>> torch.manual_seed(0) and None
    >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...                                   num_attention_heads=2)
    >>> model = transformers.AutoModelForCausalLM.from_config(config).eval()
    >>> ids = torch.tensor([[1, 5, 9, 3]])
    >>> with Capture(model, ["resid_post", "attn.pattern"], layers=[1]) as cap:
    ...     logits = model(ids).logits
    >>> cap["resid_post", 1].shape            # [batch, tokens, hidden]
    torch.Size([1, 4, 16])
    >>> cap["attn.pattern", 1].shape          # [batch, heads, queries, keys]
    torch.Size([1, 2, 4, 4])
    >>> bool(torch.allclose(cap["attn.pattern", 1].sum(-1), torch.ones(1, 2, 4)))
    True
    >>> with Capture(model, "resid_post", reduce=lambda point, layer, h: [x.abs().max() for x in h]) as cap:
    ...     _ = model(ids)
    ...     _ = model(ids)
    >>> len(cap.reduced("resid_post", 0)), len(cap.reduced("resid_post", 0)[0])   # forward calls, then sequences
    (2, 1)
    """

    def __init__(self, model: nn.Module, points, layers=None, reduce=None):
        self.view = ModelView(model)
        self.points = [points] if isinstance(points, str) else list(points)
        check_points(self.view, self.points)
        self._keys = layer_keys(self.view, self.points, layers)
        self.layers = sorted({layer for _, layer in self._keys if layer is not None})
        self.reduce = reduce
        self._tensors: dict = {}  # (point, layer) -> the tensor of the latest forward
        self._reduced: dict = {}  # (point, layer) -> per forward, what `reduce` returned
        self._watched: dict = {}  # (point, layer) -> (tensor kept without a copy, its version when captured)
        self._hooks = Hooks(self.view)
        self._saved_impl: list = []
        self._routes = ExitStack()  # the attention router's entry, where attention points are asked for
        self._paused = False

    # --- public -----------------------------------------------------------------------------------------------
    def __getitem__(self, key):
        point, layer = (key, None) if isinstance(key, str) else key
        if (point, layer) not in self._tensors:
            if (point, layer) in self._reduced:
                raise KeyError(f"{point} at layer {layer} was reduced: read cap.reduced({point!r}, {layer})")
            raise KeyError(f"{point} at layer {layer} was not captured (asked for {self.points} on {self.layers})")
        return self._tensors[(point, layer)]

    def reduced(self, point: str, layer: int | None = None) -> list:
        """What `reduce` returned for `point` at `layer`, one entry per forward call."""
        if (point, layer) not in self._reduced:
            raise KeyError(f"{point} at layer {layer} has no reduced result (asked for {self.points} on "
                           f"{self.layers}{'' if self.reduce else ', without reduce'})")
        return self._reduced[(point, layer)]

    def keys(self) -> list[tuple[str, int | None]]:
        """The (point, layer) pairs captured so far."""
        return list(self._reduced if self.reduce is not None else self._tensors)

    def clear(self) -> None:
        """Forget every captured tensor and reduced result (the capture goes on recording)."""
        self._tensors.clear()
        self._reduced.clear()
        self._watched.clear()

    def __enter__(self):
        _OPEN.append(self)
        try:
            for point, layer in self._keys:
                self._install(point, layer)
            if any(p in REGISTRY_POINTS for p in self.points):
                self._enter_attention()
            if self.reduce is None:  # the end of a forward of the model or of its decoder (the bench's)
                for module in {id(m): m for m in (self.view.model, getattr(self.view.model, "base_model", None))
                               if m is not None}.values():
                    self._hooks.add(module, self._check_unchanged)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc):
        try:
            if exc[0] is None:  # a forward the hooks did not see the end of (a layer called on its own)
                self._check_unchanged()
        finally:
            self._restore()
        return False

    def _restore(self) -> None:
        self._hooks.remove()
        for config, impl in self._saved_impl:
            config._attn_implementation = impl
        self._saved_impl.clear()
        self._routes.close()
        if self in _OPEN:
            _OPEN.remove(self)

    # --- storing ----------------------------------------------------------------------------------------------
    def _emit(self, point: str, layer: int, tensor: torch.Tensor, ours: bool = False) -> None:
        """Hand a captured tensor to the reducer, or keep it (float32, CPU); `ours`: made by capture itself. The
        model's own tensor is kept without a copy and its version counter watched: a forward that changes it in
        place afterwards is a CaptureError, not a silently wrong result. Points the family is known to change in
        place (its `copies`), and tensors made under inference_mode (they have no version counter), are copied."""
        if self._paused:
            return
        tensor = tensor.detach()
        if self.reduce is not None:
            self._reduced.setdefault((point, layer), []).append(self.reduce(point, layer, tensor))
            return
        kept = tensor.to("cpu", torch.float32 if tensor.is_floating_point() else tensor.dtype)
        if kept.data_ptr() == tensor.data_ptr() and not ours:
            if point in self.view.family.copies or kept.is_inference():
                kept = kept.clone()
            else:
                self._watched[(point, layer)] = (kept, kept._version)
        self._tensors[(point, layer)] = kept

    def _check_unchanged(self, *_) -> None:
        """After a forward: every tensor kept without a copy is as it was captured (then no longer watched)."""
        watched, self._watched = self._watched, {}
        for (point, layer), (tensor, version) in watched.items():
            if tensor._version != version:
                raise CaptureError(f"{point} at layer {layer}: this {self.view.model_type} model changed the tensor "
                                   "in place after it was captured; add the point to the family's `copies` in "
                                   "monkey_patch/adapters.py")

    # --- hooks ------------------------------------------------------------------------------------------------
    def _install(self, point: str, layer) -> None:
        emit = lambda t: self._emit(point, layer, t)  # noqa: E731
        if point in LAYERLESS:
            self._hooks.read(model_site(self.view, point), point, layer, emit)
        elif point in ("attn.pattern", "attn.extra") and not self.view.family.registry:
            if point == "attn.pattern" or "attn.pattern" not in self.points:  # the pattern hook emits both
                self._hook_legacy_pattern(layer)
        elif point == "attn.scores" and not self.view.family.registry:
            self._hook_scores(layer)
        elif point not in REGISTRY_POINTS:  # those are served by the registered attention function
            self._hooks.read(layer_site(self.view, point, layer), point, layer, emit)

    def _hook_legacy_pattern(self, layer: int) -> None:
        """Families outside the registry return probabilities from their attention module (falcon, mpt) or pass
        them through a module on an explicit path (nanogpt: monkey_patch.hook_points); where they carry an extra key
        first, it is split off as attn.extra."""
        flag = self.view.family.weights_flag
        extra = self.view.has_extra_key()
        attn = self.view.attn(layer)

        def force_weights(module, args, kwargs):
            if flag:
                kwargs[flag] = True
            return args, kwargs

        def take_weights(module, inputs, output):
            if not isinstance(output, tuple) or output[-1] is None or output[-1].dim() != 4:
                raise CaptureError(f"{self.view.model_type}: attention module returned no probabilities")
            take(output[-1])

        def take(weights):
            if extra:
                if "attn.extra" in self.points:
                    self._emit("attn.extra", layer, weights[..., 0])
                weights = weights[..., 1:]
            if "attn.pattern" in self.points:
                self._emit("attn.pattern", layer, weights)

        if self.view.family.pattern is not None:
            self._routes.enter_context(explicit_attention(self.view))
            self._hooks.add(get_submodule(attn, self.view.family.pattern), lambda m, i, o: take(self._map(attn, o)))
            return
        self._hooks.add(attn, force_weights, pre=True)
        self._hooks.add(attn, take_weights)
        self._switch_implementation("eager")  # so the model builds the additive mask these modules expect

    def _hook_scores(self, layer: int) -> None:
        """The scores on the explicit path (nanogpt: monkey_patch.hook_points), read after any edit's mask there."""
        attn = self.view.attn(layer)
        self._routes.enter_context(explicit_attention(self.view))
        self._hooks.read(Site(get_submodule(attn, self.view.family.scores)), "attn.scores", layer,
                         lambda scores: self._emit("attn.scores", layer, self._map(attn, scores)))

    def _map(self, attn, tensor):
        """A map passing through a hook point, unless an edit's kernel replaces the layer's attention output: the
        maps of its inner runs are not the layer's (the registry's families raise the same)."""
        if replaced(attn) and not self._paused:
            raise CaptureError(f"{type(attn).__name__}: an attention edit replaces this layer's attention output, so "
                               "its attention maps are not defined; capture other points under it")
        return tensor

    # --- attention registry -----------------------------------------------------------------------------------
    def _enter_attention(self) -> None:
        """Join the model's attention router (monkey_patch.routing): its one attention function applies the
        active edits, hands the edited mask to this capture, then runs the model's own kernel."""
        if not self.view.family.registry:
            return
        self._requested = set(self.layers)
        self._routes.enter_context(route(self.view.model, self.view.layers, self.view.family.attn, capture=self))

    def _switch_implementation(self, name: str) -> None:
        for config in model_configs(self.view.model):
            if all(c is not config for c, _ in self._saved_impl):
                self._saved_impl.append((config, config._attn_implementation))
            config._attn_implementation = name

    def _capture_attention(self, module, layer, query, key, attention_mask, replaced=(), **kwargs):
        """Emit the attention points of a requested layer (from the edited mask the router hands over); returns
        the whole pattern where it was made. Maps are made without autograd (captured tensors are detached)."""
        if layer not in self._requested:
            return None
        wanted = set(self.points)
        if replaced and wanted & {"attn.scores", "attn.pattern"}:
            raise CaptureError(f"layer {layer}: {type(replaced[0]).__name__} replaces this layer's attention output, "
                               "so its attention maps are not defined; capture other points under it")
        with torch.no_grad():
            return self._attention_maps(module, layer, query.detach(), key.detach(), attention_mask, wanted,
                                        **kwargs)

    def _attention_maps(self, module, layer, query, key, attention_mask, wanted, **kwargs):
        if "attn.q_rot" in wanted:
            self._emit("attn.q_rot", layer, query.transpose(1, 2))
        if "attn.k_rot" in wanted:
            self._emit("attn.k_rot", layer, key.transpose(1, 2))
        if self._sums_pattern_over_queries():
            self._summed_pattern(module, layer, query, key, attention_mask, **kwargs)
            return None
        if "attn.scores" not in wanted and "attn.pattern" not in wanted:
            return None
        scores, pattern = _maps(module, query, key, attention_mask, "attn.scores" in wanted,
                                "attn.pattern" in wanted, **kwargs)
        if scores is not None:
            self._emit("attn.scores", layer, scores, ours=True)
        if pattern is not None:
            self._emit("attn.pattern", layer, pattern, ours=True)
        return pattern

    def _sums_pattern_over_queries(self) -> bool:
        """attn.pattern's reducer adds its results up over queries (column sums), so the map can be made and
        reduced chunk by chunk, and no other point asks for the whole map (attn.scores)."""
        flag = getattr(self.reduce, "sums_over_queries", False)
        additive = flag is True or (isinstance(flag, (set, frozenset)) and "attn.pattern" in flag)
        return additive and "attn.pattern" in self.points and "attn.scores" not in self.points

    def _summed_pattern(self, module, layer, query, key, attention_mask, **kwargs) -> None:
        """attn.pattern reduced chunk by chunk and added up; the whole map is never held. A reducer that sums over
        queries gives per sequence a [heads, keys] float32 CPU tensor, so each chunk's result is added into its
        heads and keys."""
        total = torch.zeros(query.shape[0], query.shape[1], key.shape[2])
        for chunk in _chunks(module, query, key, attention_mask, **kwargs):
            parts = self.reduce("attn.pattern", layer, chunk.probs())
            total[chunk.sequences, chunk.heads, :chunk.seen] += torch.stack(parts)
        self._reduced.setdefault(("attn.pattern", layer), []).append(list(total))


class _Chunk(NamedTuple):
    """Eager attention's logits [sequences, heads, rows, seen] (model dtype) for some sequences, heads and query
    rows, over the keys up to the last one those queries see; the mask blocks `blocked` [.., rows, seen - acts] of
    keys acts..seen-1 and leaves the keys before `acts` alone. `spare`: a float32 buffer of the logits' shape."""
    sequences: slice
    heads: slice
    rows: slice
    seen: int
    logits: torch.Tensor
    acts: int
    blocked: torch.Tensor
    spare: torch.Tensor

    def probs(self) -> torch.Tensor:
        """Eager's softmax, in float32 (in the spare buffer)."""
        return torch.softmax(self.spare.copy_(self.logits), dim=-1, out=self.spare)

    def scores(self) -> torch.Tensor:
        """The logits with the blocked entries -inf (in place)."""
        self.logits[..., self.acts:].masked_fill_(self.blocked, float("-inf"))
        return self.logits


def _chunks(module, query, key, attention_mask, **kwargs):
    """Eager attention's logits chunk by chunk (_Chunk), each over the keys up to the last one its queries see (so
    a causal map's masked half is mostly never made), in the shapes of _chunk_plan. Two buffers serve every chunk:
    the next chunk overwrites the last one's logits and probabilities."""
    batch, heads, queries, _ = query.shape
    keys, groups = key.shape[2], heads // key.shape[1]
    seqs_per, heads_per, rows_per = _chunk_plan(batch, heads, groups, keys, cpu=query.device.type == "cpu")
    size = seqs_per * heads_per * rows_per * keys
    logits_buffer = torch.empty(size, dtype=query.dtype, device=query.device)
    spare_buffer = torch.empty(size, dtype=torch.float32, device=query.device)
    for start in range(0, queries, rows_per):
        rows = slice(start, min(start + rows_per, queries))
        seen, acts, mask, blocked = _chunk_mask(attention_mask, query, key, rows)
        for first_sequence in range(0, batch, seqs_per):
            sequences = slice(first_sequence, first_sequence + seqs_per)
            chunk_mask, chunk_blocked = (mask, blocked) if mask.shape[0] == 1 else (mask[sequences], blocked[sequences])
            for first in range(0, heads, heads_per):
                block = slice(first, first + heads_per)
                kv = slice(first // groups, (first + heads_per) // groups)
                logits = _logits(module, query[sequences, block, rows], key[sequences, kv, :seen], out=logits_buffer,
                                 **kwargs)
                logits[..., acts:] += chunk_mask
                spare = spare_buffer[:logits.numel()].view(logits.shape)
                yield _Chunk(sequences, block, rows, seen, logits, acts, chunk_blocked, spare)


def _chunk_plan(batch: int, heads: int, groups: int, keys: int, cpu: bool) -> tuple[int, int, int]:
    """(sequences, heads, queries) that one chunk holds. On a CPU one sequence and one key head's group of query
    heads, and as many queries as keep it within CHUNK_ELEMENTS: a plain matrix product whose steps stay in cache
    (batched bf16 products are several times slower there). On a GPU every sequence and as many whole groups as
    keep it within CHUNK_ELEMENTS_GPU: fewer, larger kernels. At most CHUNK_QUERIES queries either way."""
    if cpu:
        return 1, groups, max(1, min(CHUNK_QUERIES, CHUNK_ELEMENTS // (groups * keys)))
    rows = max(1, min(CHUNK_QUERIES, CHUNK_ELEMENTS_GPU // (batch * groups * keys)))
    return batch, min(heads, groups * max(1, CHUNK_ELEMENTS_GPU // (batch * groups * rows * keys))), rows


def _chunk_mask(attention_mask, query, key, rows):
    """For the queries `rows`: (seen, acts, mask, blocked): the keys up to the last one any of them sees (all keys
    where one sees none: eager then spreads it over every key), the first key the mask changes, and over keys
    acts..seen-1 eager's additive mask and where it blocks. Plain causal attention (no mask) is masked only in
    the chunk's own diagonal block, and only that block is made."""
    if attention_mask is None:
        offset = key.shape[-2] - query.shape[-2]  # query i sees keys up to i + offset
        seen, acts = min(key.shape[-2], rows.stop + offset), min(key.shape[-2], rows.start + offset + 1)
        mask = additive_mask(None, query, key, rows, slice(acts, seen))
        return seen, acts, mask, mask <= torch.finfo(mask.dtype).min / 2
    mask = additive_mask(attention_mask, query, key, rows)
    blocked = mask <= torch.finfo(mask.dtype).min / 2
    seen = _keys_seen(~blocked)
    changed = mask[..., :seen].ne(0).flatten(0, -2).any(0).nonzero()
    acts = int(changed.min()) if len(changed) else seen
    return seen, acts, mask[..., acts:seen], blocked[..., acts:seen]


def _maps(module, query, key, attention_mask, want_scores: bool, want_pattern: bool, **kwargs):
    """attn.scores (the logits the softmax sees, blocked entries -inf) and attn.pattern (eager's probabilities:
    softmax in float32, rounded to the model's dtype), float32 [batch, heads, queries, keys], made chunk by chunk;
    None for the one not wanted."""
    shape = (query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    scores = torch.empty(shape, device=query.device) if want_scores else None
    pattern = torch.empty(shape, device=query.device) if want_pattern else None
    for chunk in _chunks(module, query, key, attention_mask, **kwargs):
        sequences, heads, rows, seen = chunk.sequences, chunk.heads, chunk.rows, chunk.seen
        if want_pattern:
            target = pattern[sequences, heads, rows, :seen]
            if query.dtype == torch.float32:
                torch.softmax(chunk.logits, dim=-1, out=target)
            else:
                target.copy_(chunk.probs().to(query.dtype))
            pattern[sequences, heads, rows, seen:] = 0.0
        if want_scores:
            scores[sequences, heads, rows, :seen] = chunk.scores()
            scores[sequences, heads, rows, seen:] = float("-inf")
    return scores, pattern


def _keys_seen(visible) -> int:
    """How many leading keys the queries of a mask chunk (bool, True: attend) need: up to the last key any of them
    sees; all keys when a query sees none (eager then spreads it evenly over every key)."""
    keys = visible.shape[-1]
    if not visible.any(-1).all():
        return keys
    return int(visible.flatten(0, -2).any(0).nonzero().max()) + 1


def _logits(module, query, key, out=None, scaling=None, softcap=None, **kwargs):
    """Scaled q.k for every head, soft-capped where the family does, in the model's dtype as eager makes them (in the
    flat buffer `out` where given). Grouped query heads share their key head without copies: each key head's
    queries are stacked as rows of one product. With one sequence and one key head that is a plain matrix product
    with the scale applied inside it (batched bf16 products are several times slower on a CPU, and a separate
    scaling pass costs as much as the product)."""
    batch, heads, queries, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else dim ** -0.5
    stacked = query.reshape(batch, kv_heads, heads // kv_heads * queries, dim)
    n = batch * heads * queries * keys
    out = (torch.empty(n, dtype=query.dtype, device=query.device) if out is None else out[:n]).view(
        *stacked.shape[:3], keys)
    if batch * kv_heads == 1:
        torch.addmm(out[0, 0], stacked[0, 0], key[0, 0].T, beta=0, alpha=scale, out=out[0, 0])
    else:
        torch.matmul(stacked, key.transpose(-1, -2), out=out).mul_(scale)
    scores = out.view(batch, heads, queries, keys)
    if softcap is not None:
        scores.copy_(torch.tanh(scores / softcap) * softcap)
    return scores
