"""Capture on a tiny model of every family, checked against Hugging Face's own outputs and hand computations."""
import pytest
import torch
import torch.nn.functional as F

from lib.tiny_models import FAMILY_CONFIGS, tiny_model
from monkey_patch import POINTS, Capture, CaptureError, ModelView
from monkey_patch.adapters import FAMILIES as ADAPTERS
from monkey_patch.sites import LAYERLESS

FAMILIES = list(FAMILY_CONFIGS)
# attn.q_rot, attn.k_rot and attn.scores come from transformers' attention registry, so only its families have them
REGISTRY = [f for f in FAMILIES if ADAPTERS[FAMILY_CONFIGS[f]().model_type].registry]
ROTARY = [f for f in REGISTRY if f not in ("opt", "gpt2")]  # the others add learned positions to the embedding
ATOL = 1e-5


def _ids(seed=1, batch=2, length=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (batch, length), generator=g)


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module", params=FAMILIES)
def family_run(request):
    family = request.param
    model = tiny_model(family)
    view = ModelView(model)
    ids = _ids()
    hooks_before = _hook_count(model)
    impl_before = model.config._attn_implementation
    with torch.no_grad():
        logits_before = model(ids).logits
        with Capture(model, view.supported_points()) as cap:
            logits_inside = model(ids).logits
        logits_after = model(ids).logits
    eager = tiny_model(family, attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = eager(ids, output_hidden_states=True, output_attentions=True)
    return dict(family=family, model=model, view=view, cap=cap, ref=ref, ids=ids,
                hooks_before=hooks_before, impl_before=impl_before,
                logits_before=logits_before, logits_after=logits_after, logits_inside=logits_inside)


def test_hooks_leave_no_trace(family_run):
    r = family_run
    assert torch.equal(r["logits_before"], r["logits_after"])
    assert _hook_count(r["model"]) == r["hooks_before"]
    assert r["model"].config._attn_implementation == r["impl_before"]


def test_capture_changes_no_output(family_run):
    # every attention output comes from the model's own kernel, the maps are made beside it; families outside the
    # registry return their probabilities from a forced eager path, equal up to rounding
    r = family_run
    if r["view"].family.registry:
        assert torch.equal(r["logits_inside"], r["logits_before"])
    else:
        torch.testing.assert_close(r["logits_inside"], r["logits_before"], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_bf16_maps_match_eager(family):
    # in bf16 the logits are made as eager makes them (in the model's dtype), so pattern and column sums agree with
    # eager's own output_attentions to bf16's precision
    from lib import reducers
    model = tiny_model(family).to(torch.bfloat16)
    eager = tiny_model(family, attn_implementation="eager").to(torch.bfloat16)
    eager.load_state_dict(model.state_dict())
    ids = _ids(length=33)
    with torch.no_grad():
        ref = eager(ids, output_attentions=True).attentions
        with Capture(model, ["attn.pattern"]) as cap:
            model(ids)
        with Capture(model, ["attn.pattern"], reduce=reducers.attention_column_sums) as summed:
            model(ids)
    for layer, probs in enumerate(ref):
        torch.testing.assert_close(cap["attn.pattern", layer], probs.float(), atol=1e-2, rtol=1e-2)
        for seq in range(ids.shape[0]):
            torch.testing.assert_close(summed.reduced("attn.pattern", layer)[0][seq], probs[seq].float().sum(1),
                                       atol=5e-2, rtol=1e-2)


def test_residual_stream_matches_hidden_states(family_run):
    r = family_run
    cap, hidden, view = r["cap"], r["ref"].hidden_states, r["view"]
    n = view.num_layers
    for layer in range(n - 1):
        torch.testing.assert_close(cap["resid_post", layer], hidden[layer + 1], atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(cap["resid_pre", layer + 1], hidden[layer + 1], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(cap["resid_pre", 0], hidden[0], atol=ATOL, rtol=1e-4)
    with torch.no_grad():  # HF's last hidden state has the final norm applied
        last = view.final_norm()(cap["resid_post", n - 1])
    torch.testing.assert_close(last, hidden[n], atol=ATOL, rtol=1e-4)


def test_model_points_match_the_models_outputs(family_run):
    """input_ids, embed, ln_final and logits: the ids given, the embedding looked up by hand, HF's last hidden state
    (after the final norm) and the logits the forward returned."""
    r = family_run
    cap, view = r["cap"], r["view"]
    assert torch.equal(cap["input_ids"], r["ids"]) and cap["input_ids"].dtype == r["ids"].dtype
    table = r["model"].get_input_embeddings().weight
    torch.testing.assert_close(cap["embed"], table[r["ids"]] * _embedding_scale(r["model"]), atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(cap["ln_final"], r["ref"].hidden_states[view.num_layers], atol=ATOL, rtol=1e-4)
    cap_at = getattr(r["model"].config, "final_logit_softcapping", None)  # Gemma 2 soft-caps after the head
    logits = cap["logits"] if cap_at is None else torch.tanh(cap["logits"] / cap_at) * cap_at
    torch.testing.assert_close(logits, r["logits_inside"], atol=0 if cap_at is None else ATOL, rtol=0)


def _embedding_scale(model) -> float:
    """Gemma 3's embedding module multiplies by sqrt(hidden) itself; the other families scale outside it, or not."""
    return float(getattr(model.get_input_embeddings(), "embed_scale", 1.0))


def test_module_input_and_output_points_match_plain_hooks(family_run):
    """attn_in, mlp_in and mlp_out against plain hooks on the modules the forward calls: the attention module's
    input, the first MLP projection's input, and the MLP's write to the residual (after a sandwich norm)."""
    r = family_run
    view, cap = r["view"], r["cap"]
    if view.family.down is None:
        pytest.skip("no MLP internals")
    seen, handles = {}, []
    for layer in range(view.num_layers):
        first = view.module(layer, "gate_up") or view.module(layer, "gate") or view.module(layer, "up")
        post = getattr(view.layers[layer], view.family.mlp_out_norm or "", None)
        handles += [view.attn(layer).register_forward_pre_hook(
                        lambda m, a, k, i=layer: seen.__setitem__(("attn_in", i), a[0] if a else k["hidden_states"]),
                        with_kwargs=True),
                    first.register_forward_pre_hook(lambda m, a, i=layer: seen.__setitem__(("mlp_in", i), a[0])),
                    (post or view.module(layer, "down")).register_forward_hook(
                        lambda m, a, o, i=layer: seen.__setitem__(("mlp_out", i), o.clone()))]  # falcon adds to it
    try:
        with torch.no_grad():
            r["model"](r["ids"])
    finally:
        for handle in handles:
            handle.remove()
    for (point, layer), tensor in seen.items():
        torch.testing.assert_close(cap[point, layer].flatten(), tensor.float().flatten(), atol=ATOL, rtol=1e-4)


def test_attention_pattern_matches_eager_output_attentions(family_run):
    r = family_run
    for layer, probs in enumerate(r["ref"].attentions):
        torch.testing.assert_close(r["cap"]["attn.pattern", layer], probs.float(), atol=ATOL, rtol=1e-4)


def _rotary_by_hand(r, layer):
    """attn.q and attn.k ([batch, pos, head, d], before rotary) turned by the family's own rotary embedding: its
    model's rotary_emb module and its modeling file's apply_rotary_pos_emb, on the first cos.shape[-1] dims of
    each head (partial rotary: phi, gpt_neox), as [batch, head, pos, d]."""
    import inspect
    import sys
    view, cap = r["view"], r["cap"]
    q, k = cap["attn.q", layer].transpose(1, 2), cap["attn.k", layer].transpose(1, 2)
    modules = {name.rsplit(".", 1)[-1]: module for name, module in view.model.named_modules()}
    positions = torch.arange(q.shape[2])[None]
    kind = (getattr(view.config, "layer_types", None) or [None] * view.num_layers)[layer]
    if "layer_type" in inspect.signature(modules["rotary_emb"].forward).parameters:  # gemma3 on transformers 5
        cos, sin = modules["rotary_emb"](q, positions, kind)
    elif kind == "sliding_attention" and "rotary_emb_local" in modules:  # gemma3 on transformers 4.57
        cos, sin = modules["rotary_emb_local"](q, positions)
    else:
        cos, sin = modules["rotary_emb"](q, positions)
    apply = sys.modules[type(view.attn(layer)).__module__].apply_rotary_pos_emb
    n = cos.shape[-1]
    q_turned, k_turned = apply(q[..., :n], k[..., :n], cos, sin)
    return torch.cat([q_turned, q[..., n:]], dim=-1), torch.cat([k_turned, k[..., n:]], dim=-1)


@pytest.mark.parametrize("family_run", ROTARY, indirect=True)
def test_rotated_queries_and_keys_are_the_familys_rotary_of_q_and_k(family_run):
    r = family_run
    for layer in range(r["view"].num_layers):
        q, k = _rotary_by_hand(r, layer)
        assert not torch.allclose(q, r["cap"]["attn.q", layer].transpose(1, 2), atol=1e-3)  # the rotation shows
        torch.testing.assert_close(r["cap"]["attn.q_rot", layer], q.transpose(1, 2), atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(r["cap"]["attn.k_rot", layer], k.transpose(1, 2), atol=ATOL, rtol=1e-4)


def _scores_by_hand(r, layer):
    """q.k / sqrt(d) from attn.q and attn.k (turned by the family's rotary where it has one), soft-capped where the
    config says so (gemma2), with -inf where the query may not see the key: later keys, and keys at or beyond
    the sliding window on the layers that have one. d is the head dim, or query_pre_attn_scalar (gemma2/3)."""
    view, cap, config = r["view"], r["cap"], r["view"].config
    if r["family"] in ROTARY:
        q, k = _rotary_by_hand(r, layer)
    else:
        q, k = cap["attn.q", layer].transpose(1, 2), cap["attn.k", layer].transpose(1, 2)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # grouped queries share a key head
    d = getattr(config, "query_pre_attn_scalar", None) or view.head_dim
    scores = q @ k.transpose(-1, -2) / d ** 0.5
    cap_value = getattr(config, "attn_logit_softcapping", None)
    if cap_value:
        scores = torch.tanh(scores / cap_value) * cap_value
    tokens = torch.arange(q.shape[2])
    visible = tokens[None, :] <= tokens[:, None]
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None) if types is None or types[layer] == "sliding_attention" else None
    if window:
        visible &= tokens[None, :] > tokens[:, None] - window
    return scores.masked_fill(~visible, float("-inf"))


@pytest.mark.parametrize("family_run", REGISTRY, indirect=True)
def test_scores_are_scaled_q_dot_k_with_the_mask(family_run):
    r = family_run
    for layer in range(r["view"].num_layers):
        scores = r["cap"]["attn.scores", layer]
        torch.testing.assert_close(scores, _scores_by_hand(r, layer), atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(torch.softmax(scores, dim=-1), r["cap"]["attn.pattern", layer], atol=ATOL,
                                   rtol=1e-4)


def _linear(x, module_weight, module):
    bias = getattr(module, "bias", None)
    return F.linear(x, module_weight, bias)


def test_projections_agree_with_weights(family_run):
    """v = W_v ln1 (+b); attn_out = W_o z (+b); down_out = W_down down_in (+b): by hand from the weights."""
    r = family_run
    view, cap = r["view"], r["cap"]
    for layer in range(view.num_layers):
        z = cap["attn.z", layer]
        o = view.module(layer, "o")
        torch.testing.assert_close(_linear(z.flatten(-2), view.weight(layer, "o"), o), cap["attn_out", layer],
                                   atol=ATOL, rtol=1e-4)
        v = cap["attn.v", layer]
        v_weight = view.weight(layer, "v")
        v_by_hand = F.linear(cap["ln1", layer], v_weight)
        if view.family.qkv is None and view.module(layer, "v").bias is not None:
            v_by_hand = v_by_hand + view.module(layer, "v").bias
        if view.family.qkv is None or getattr(view.module(layer, "qkv"), "bias", None) is None:
            torch.testing.assert_close(v_by_hand, v.flatten(-2), atol=ATOL, rtol=1e-4)
        if view.family.down is None:
            continue
        down = view.module(layer, "down")
        torch.testing.assert_close(_linear(cap["mlp.down_in", layer], view.weight(layer, "down"), down),
                                   cap["mlp.down_out", layer], atol=ATOL, rtol=1e-4)
        expected_down_in = cap["mlp.act_out", layer]
        if "mlp.gate_out" in cap.points:
            expected_down_in = expected_down_in * cap["mlp.up_out", layer]
        torch.testing.assert_close(expected_down_in, cap["mlp.down_in", layer], atol=ATOL, rtol=1e-4)


def test_weights_are_out_by_in_matrices(family_run):
    """Each input-side weight, as [out, in], maps its captured input to its captured output: q, k, v read ln1
    (then the family's per-head q/k norm, where it has one), gate and up read ln2. Outputs are compared centred
    over the tokens, so that a bias (its share of a fused one included) drops out; o and down are checked with their
    biases in test_projections_agree_with_weights."""
    r = family_run
    view, cap = r["view"], r["cap"]
    centred = lambda t: t - t.mean(dim=1, keepdim=True)  # noqa: E731
    outputs = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "gate": "mlp.gate_out", "up": "mlp.up_out"}
    for layer in range(view.num_layers):
        for role in [role for role in view.weight_roles() if role in outputs]:
            source = cap["ln2" if role in ("gate", "up") else "ln1", layer]
            by_hand = F.linear(source, view.weight(layer, role))
            captured = cap[outputs[role], layer]
            norm = view.module(layer, role + "_norm") if role in ("q", "k") else None
            if norm is not None:
                with torch.no_grad():
                    by_hand = norm(by_hand.view(captured.shape))
            by_hand = by_hand.reshape(captured.shape)
            torch.testing.assert_close(centred(by_hand), centred(captured), atol=ATOL, rtol=1e-4,
                                       msg=f"{role} at layer {layer}")


PER_HEAD = ("attn.q", "attn.k", "attn.v", "attn.q_rot", "attn.k_rot", "attn.z")
MAPS = ("attn.scores", "attn.pattern")


def test_every_point_has_the_documented_shape_and_the_modules_values(family_run):
    """[batch, tokens, F] for the stream, norm and MLP points, [batch, tokens, heads, d] per head, [batch, heads,
    queries, keys] for the maps, in every family (OPT's forward flattens its MLP's input on transformers 5.x);
    the MLP norm's output and the down-projection's input equal what a plain hook on those modules sees."""
    r = family_run
    view, cap, (batch, tokens) = r["view"], r["cap"], r["ids"].shape
    for layer in range(view.num_layers):
        for point in [p for p in cap.points if p not in LAYERLESS]:
            shape = cap[point, layer].shape
            if point in MAPS:
                assert shape[0] == batch and shape[-2:] == (tokens, tokens), (point, shape)
            elif point in PER_HEAD:
                assert shape[:2] == (batch, tokens) and len(shape) == 4, (point, shape)
            elif point != "attn.scale":
                assert shape[:2] == (batch, tokens) and len(shape) == 3, (point, shape)
    seen, handles = {}, []
    for layer in range(view.num_layers):
        handles.append(view.module(layer, "ln2").register_forward_hook(
            lambda m, i, o, layer=layer: seen.__setitem__(("ln2", layer), o[0] if isinstance(o, tuple) else o)))
        if view.family.down is not None:
            handles.append(view.module(layer, "down").register_forward_pre_hook(
                lambda m, args, layer=layer: seen.__setitem__(("mlp.down_in", layer), args[0])))
    try:
        with torch.no_grad():
            r["model"](r["ids"])
    finally:
        for h in handles:
            h.remove()
    for (point, layer), raw in seen.items():
        torch.testing.assert_close(raw.reshape(cap[point, layer].shape).float(), cap[point, layer], atol=ATOL,
                                   rtol=1e-4, msg=f"{point} at layer {layer}")


def test_reduce_runs_on_the_fly_and_keeps_only_results():
    model = tiny_model("llama")
    seen = []

    def top1(point, layer, tensor):
        seen.append((point, layer, tuple(tensor.shape)))
        return float(tensor.abs().max())

    with torch.no_grad(), Capture(model, ["resid_post", "attn.pattern"], layers=[1], reduce=top1) as cap:
        model(_ids(length=7))
        model(_ids(seed=2, length=5))
    assert [s[0] for s in seen] == ["attn.pattern", "resid_post", "attn.pattern", "resid_post"]
    assert len(cap.reduced("resid_post", 1)) == 2 and all(isinstance(v, float) for v in cap.reduced("resid_post", 1))
    assert cap.reduced("attn.pattern", 1)[0] <= 1.0


def test_only_requested_layers_and_points_are_kept():
    model = tiny_model("gemma3_text")
    with torch.no_grad(), Capture(model, ["resid_post"], layers=[2]) as cap:
        model(_ids())
    assert cap.keys() == [("resid_post", 2)]
    with pytest.raises(KeyError):
        cap["resid_post", 1]


def test_bad_requests_are_clear_errors():
    model = tiny_model("llama")
    with pytest.raises(CaptureError, match="out of range"):
        Capture(model, ["resid_post"], layers=[3])
    with pytest.raises(CaptureError, match="unknown capture point"):
        Capture(model, ["resid_middle"])
    with pytest.raises(CaptureError, match="mixture of experts"):
        Capture(tiny_model("mixtral"), ["mlp.down_in"])
    with pytest.raises(CaptureError, match="non-gated"):
        Capture(tiny_model("gpt2"), ["mlp.gate_out"])
    with pytest.raises(CaptureError, match="registry"):
        Capture(tiny_model("mpt"), ["attn.scores"])


def test_exception_inside_capture_restores_the_model():
    model = tiny_model("llama")
    hooks, impl = _hook_count(model), model.config._attn_implementation
    with pytest.raises(RuntimeError):
        with Capture(model, ["attn.pattern", "resid_post"]):
            raise RuntimeError("boom")
    assert _hook_count(model) == hooks and model.config._attn_implementation == impl


def test_every_point_is_documented():
    import monkey_patch.capture as c
    for point in POINTS:
        assert point in c.__doc__


def test_nested_attention_captures_are_refused_and_leave_the_outer_one_working():
    model = tiny_model("llama")
    with torch.no_grad(), Capture(model, ["attn.pattern"], layers=[0]) as outer:
        with pytest.raises(CaptureError, match="already active"):
            with Capture(model, ["attn.pattern"], layers=[1]):
                pass
        model(_ids())
    assert outer["attn.pattern", 0].shape == (2, 4, 10, 10)


@pytest.mark.parametrize("plan", ["cpu", "gpu"])
@pytest.mark.parametrize("family", REGISTRY)  # outside the registry the family's own forward returns the whole map
def test_column_sums_made_chunk_by_chunk_equal_those_of_eager_attentions(family, plan, monkeypatch):
    """Column sums reduced chunk by chunk (on a CPU per sequence and key head, with plain matrix products; in the
    GPU's plan all sequences and heads at once, with batched ones), each chunk over only the keys its queries see,
    equal those of Hugging Face's eager output_attentions, in a right-padded batch too; the model's output is that
    of a plain forward.
    Left padding leaves the pad queries nothing to see, where families' eager code differs (transformers 4.57's
    GPT-2 spreads them over the earlier keys, later releases over every key): there only the unpadded sequence
    is compared, and the padded one must stay finite."""
    from lib import reducers
    from monkey_patch import capture as capture_module
    model = tiny_model(family)
    ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(0))
    padding, left = torch.ones_like(ids), torch.ones_like(ids)
    padding[0, -5:] = 0
    left[0, :5] = 0
    eager = tiny_model(family, attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    monkeypatch.setattr(capture_module, "CHUNK_QUERIES", 7)
    if plan == "gpu":
        monkeypatch.setattr(capture_module, "_chunk_plan", lambda *a, cpu, plan=capture_module._chunk_plan: plan(
            *a, cpu=False))
    kv = ModelView(model).num_kv_heads
    shapes, logits = [], capture_module._logits
    monkeypatch.setattr(capture_module, "_logits", lambda m, q, k, **kw: (
        shapes.append((q.shape[2], k.shape[2])), logits(m, q, k, **kw))[1])
    reduce = reducers.by_point({"attn.pattern": reducers.attention_column_sums}, default=reducers.topk_median(3))
    with torch.no_grad():
        plain = model(input_ids=ids[1:]).logits
        with Capture(model, ["attn.pattern", "resid_post"], reduce=reduce) as cap:
            out = model(input_ids=ids[1:]).logits
            model(input_ids=ids, attention_mask=padding)
            model(input_ids=ids, attention_mask=left)
        ref = [eager(input_ids=ids[1:], output_attentions=True).attentions,
               eager(input_ids=ids, attention_mask=padding, output_attentions=True).attentions,
               eager(input_ids=ids, attention_mask=left, output_attentions=True).attentions]
    layers = model.config.num_hidden_layers
    # unpadded: chunks of 7 queries over the keys up to their last query; padded: every key where a row sees none
    one, two = (kv, 2 * kv) if plan == "cpu" else (1, 1)  # logits per chunk of queries, batch of one / two
    assert shapes[:6 * one] == [s for s in [(7, 7), (7, 14), (7, 21), (7, 28), (7, 35), (5, 40)] for _ in range(one)]
    assert (7, 40) in shapes[6 * layers * (one + two):]
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    for call, probs in enumerate(ref):
        for layer in range(layers):
            assert torch.isfinite(cap.reduced("attn.pattern", layer)[call][0]).all()
            for seq in range(probs[layer].shape[0]) if call < 2 else [1]:
                torch.testing.assert_close(cap.reduced("attn.pattern", layer)[call][seq], probs[layer][seq].sum(1).float(),
                                           atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_pattern_of_a_left_padded_batch_matches_eager(family):
    # a padded batch makes sdpa's mask function return a boolean mask, which capture turns into eager's
    model = tiny_model(family)
    ids = _ids(length=9)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    eager = tiny_model(family, attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = eager(ids, attention_mask=mask, output_attentions=True).attentions
        with Capture(model, ["attn.pattern"]) as cap:
            model(ids, attention_mask=mask)
    for layer, probs in enumerate(ref):
        torch.testing.assert_close(cap["attn.pattern", layer][1], probs[1].float(), atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(cap["attn.pattern", layer][0, :, 3:], probs[0, :, 3:].float(), atol=ATOL, rtol=1e-4)


def test_chunk_plan_keeps_cpu_chunks_in_cache_and_gpu_chunks_large():
    from monkey_patch.capture import CHUNK_ELEMENTS, _chunk_plan
    # LLaMA-2-7B at 4096 tokens: on a CPU one head and 256 queries (1 Mi entries); on a GPU all 32 heads at once
    assert _chunk_plan(1, 32, 1, 4096, cpu=True) == (1, 1, 256)
    assert _chunk_plan(1, 32, 1, 4096, cpu=False) == (1, 32, 256)
    # grouped queries go by whole groups; a very long context still gets one query per chunk
    assert _chunk_plan(2, 9, 3, 1024, cpu=True) == (1, 3, 256)
    sequences, heads, rows = _chunk_plan(4, 32, 4, 2**21, cpu=True)
    assert (sequences, heads, rows) == (1, 4, 1) and heads * rows * 2**21 > CHUNK_ELEMENTS


def test_a_tensor_changed_in_place_after_capture_is_an_error_not_a_wrong_result():
    # captured tensors are kept without a copy and watched: plant an in-place change of layer 0's output (the next
    # layer's input) and the forward must fail; under inference_mode (no version counters) they are copied
    model = tiny_model("llama")
    ids = _ids()
    with torch.no_grad():
        reference = model(ids, output_hidden_states=True).hidden_states[1]
    hooks = _hook_count(model)  # after transformers installed its own for output_hidden_states

    def double_input(module, args, kwargs):
        (args[0] if args else kwargs["hidden_states"]).mul_(2.0)

    handle = ModelView(model).layers[1].register_forward_pre_hook(double_input, with_kwargs=True)
    try:
        with torch.no_grad(), pytest.raises(CaptureError, match="resid_post at layer 0.*in place"):
            with Capture(model, ["resid_post", "attn.pattern"], layers=[0]):
                model(ids)
        with torch.inference_mode(), Capture(model, ["resid_post"], layers=[0]) as cap:
            model(ids)
    finally:
        handle.remove()
    torch.testing.assert_close(cap["resid_post", 0], reference)
    assert _hook_count(model) == hooks
