"""The decoder family: what its table entries declare beyond the common layout (fused q/k/v layouts, parallel
attention and feed-forward, sandwich norms, OLMo-2's post norms, the multimodal Gemma-3), and generation on every
decoder: greedy ``generate()`` equals an argmax loop without a KV cache for each method, ``Parallel`` equals each
adapter alone, and ``adapterkit.init`` on the transformers causal LM class generates with adapters.

Every check of the family's semantics against AdapterHub's numbers is in tests/io/test_golden_decoders.py."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

import adapterkit
from adapterkit import AdapterSetup, AutoAdapterModel, Parallel, SeqBnConfig, Stack
from adapterkit.integration.architectures import ARCHITECTURES
from tiny import TINY_CONFIGS, randomize, tiny_config, tiny_model

SPECS = {arch: ARCHITECTURES.get(make().model_type) for arch, make in TINY_CONFIGS.items()}
DECODERS = sorted(arch for arch, spec in SPECS.items() if spec is not None and spec.decoder_only)
NEW_TOKENS = 3


def _prompt() -> tuple[torch.Tensor, torch.Tensor]:
    """Two left-padded prompts of 5 tokens (the second with 2 pads)."""
    ids = torch.randint(3, 90, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    return ids * mask, mask


def _greedy(model, ids: torch.Tensor, mask: torch.Tensor, **kwargs) -> torch.Tensor:
    greedy = dict(max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    return model.generate(ids, attention_mask=mask, **greedy, **kwargs)


def _greedy_with_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, ``(batch, NEW_TOKENS, vocab)`` logits of each step) of greedy ``generate()``."""
    out = _greedy(model, ids, mask, output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits, dim=1)


def _argmax_loop(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding that recomputes the whole sequence at every step (no KV cache), positions from the mask;
    a row that produced the eos token continues with pad tokens, as ``generate()`` does. Returns (tokens, logits
    of each step)."""
    eos = model.generation_config.eos_token_id
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    steps = []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits[:, -1]
            steps.append(logits)
            token = logits.argmax(-1).masked_fill(done, 0)
            done |= token == eos
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids, torch.stack(steps, dim=1)


def _randomize(model, name: str, seed: int) -> None:
    """Adapter weights large enough to change greedy tokens ((IA)^3 factors, ReFT on two positions)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for per_layer in model.get_adapter(name).values():
            for module in per_layer.values():
                for param in module.parameters():
                    param.add_(torch.randn(param.shape, generator=g))


def _supports_prefix(arch: str) -> bool:
    """Whether ``arch`` has prefix tuning (tests/integration/test_models.py checks the refusal elsewhere)."""
    return all(stack.attention_interface for stack in SPECS[arch].stacks)


def _lm_model(arch: str, seed: int = 0):
    """``arch``'s adapter model with a causal LM head ``lm`` (its weights made larger, so tokens vary)."""
    model = tiny_model(arch, seed=seed)
    model.add_causal_lm_head("lm")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.heads["lm"].parameters():
            if param is not model.get_input_embeddings().weight:
                param.add_(torch.randn(param.shape, generator=g) * 0.5)
    return model


# ---- generation ------------------------------------------------------------------------------------------
GENERATION_METHODS = {
    "seq_bn": "seq_bn",
    "lora": "lora[attn_matrices=['q','k','v'], intermediate_lora=True, output_lora=True]",
    "ia3": "ia3",
    "seq_bn_inv": "seq_bn_inv",
    "prefix_tuning": "prefix_tuning[prefix_length=3, bottleneck_size=8]",
    # prefix positions only (a suffix moves with every generated token, so the no-cache loop would differ); the
    # second prompt's first generated token is one of them
    "reft": "noreft[prefix_positions=4]",
}


@pytest.mark.parametrize(
    ("arch", "method"),
    [(a, m) for a in DECODERS for m in GENERATION_METHODS if m != "prefix_tuning" or _supports_prefix(a)],
)
def test_greedy_generation_equals_argmax_loop(arch, method):
    model = _lm_model(arch)
    ids, mask = _prompt()
    _, base_logits = _greedy_with_logits(model, ids, mask)
    model.add_adapter("a", config=GENERATION_METHODS[method])
    _randomize(model, "a", seed=3)
    model.set_active_adapters("a")
    out, logits = _greedy_with_logits(model, ids, mask)
    loop, loop_logits = _argmax_loop(model, ids, mask)
    assert out.shape == (2, 5 + NEW_TOKENS)
    assert torch.equal(out, loop)
    torch.testing.assert_close(logits, loop_logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits, base_logits, atol=1e-3), "the adapter does not change generation"


@pytest.mark.parametrize("arch", DECODERS)
def test_parallel_generation_equals_each_adapter_alone(arch):
    """Two adapters of different methods (a bottleneck and, where available, prefix tuning), each with its own
    LM head: ``Parallel`` gives channel-major rows equal to generating with each alone."""
    model = tiny_model(arch)
    second = "prefix_tuning[prefix_length=3, bottleneck_size=8]" if _supports_prefix(arch) else "lora"
    for name, config in (("a", "seq_bn"), ("b", second)):
        model.add_adapter(name, config=config)
        randomize(model, name, seed=ord(name))
        model.add_causal_lm_head(name)
        g = torch.Generator().manual_seed(ord(name))
        with torch.no_grad():
            for param in model.heads[name].parameters():
                if param is not model.get_input_embeddings().weight:
                    param.add_(torch.randn(param.shape, generator=g) * 0.5)
    ids, mask = _prompt()
    alone = {}
    for name in ("a", "b"):
        model.set_active_adapters(name)
        alone[name] = _greedy(model, ids, mask)
    assert not torch.equal(alone["a"], alone["b"])
    model.set_active_adapters(Parallel("a", "b"))
    out = _greedy(model, ids, mask)
    assert torch.equal(out[:2], alone["a"]) and torch.equal(out[2:], alone["b"])


def _causal_lm_class(arch: str):
    return getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[tiny_config(arch).model_type])


@pytest.mark.parametrize("arch", DECODERS)
def test_init_on_causal_lm_class_generates_with_adapters(arch):
    """``adapterkit.init`` on ``XxxForCausalLM`` (Gemma-3: ``Gemma3ForConditionalGeneration``): a Stack of LoRA and
    (where available) prefix tuning changes ``generate()``, which equals the argmax loop; deactivated, the base
    tokens come back."""
    torch.manual_seed(0)
    model = adapterkit.init(_causal_lm_class(arch)(tiny_config(arch)).eval())
    ids, mask = _prompt()
    base = _greedy(model, ids, mask)
    names = ["l"]
    model.add_adapter("l", config="lora[attn_matrices=['q','k','v'], intermediate_lora=True, output_lora=True]")
    if _supports_prefix(arch):
        model.add_adapter("p", config="prefix_tuning[prefix_length=3, bottleneck_size=8]")
        names.append("p")
    for name in names:
        _randomize(model, name, seed=5)
    model.set_active_adapters(Stack(*names))
    out, logits = _greedy_with_logits(model, ids, mask)
    loop, loop_logits = _argmax_loop(model, ids, mask)
    assert not torch.equal(out, base)
    assert torch.equal(out, loop)
    torch.testing.assert_close(logits, loop_logits, atol=1e-4, rtol=1e-4)
    model.set_active_adapters(None)
    assert torch.equal(_greedy(model, ids, mask), base)


# ---- fused q/k/v projections ----------------------------------------------------------------------------
def _qkv_rows(arch: str, config) -> dict[str, torch.Tensor]:
    """The output rows of ``arch``'s fused q/k/v projection that hold q, k and v, from the model's own layout."""
    if arch == "gpt_neox":  # viewed as (heads, 3 * head_size), then chunked into q, k, v
        heads, size = config.num_attention_heads, config.hidden_size // config.num_attention_heads
        rows = torch.arange(3 * heads * size).view(heads, 3, size)
        return {m: rows[:, i].flatten() for i, m in enumerate("qkv")}
    if arch == "phi3":  # [q | k | v] with num_key_value_heads heads for k and v
        size = config.hidden_size // config.num_attention_heads
        q, kv = config.num_attention_heads * size, config.num_key_value_heads * size
        return {"q": torch.arange(q), "k": torch.arange(q, q + kv), "v": torch.arange(q + kv, q + 2 * kv)}
    return {m: torch.arange(i * config.hidden_size, (i + 1) * config.hidden_size) for i, m in enumerate("qkv")}


@pytest.mark.parametrize("matrices", [["k"], ["q", "v"], ["q", "k", "v"]])
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "phi3"])
def test_fused_qkv_lora_updates_the_rows_of_its_matrices(arch, matrices):
    """On a fused projection, LoRA adds ``s * B_m A_m x`` exactly to the rows of each enabled matrix ``m``
    (GPT-2: equal thirds; GPT-NeoX: per head; Phi-3: q wider than k and v) and (IA)^3 scales exactly those rows."""
    model = tiny_model(arch)
    spec = model._adapter_target.spec.stack
    proj = model.base_model.get_submodule(f"{spec.layers}.0.{spec.fused_qkv}")
    rows = _qkv_rows(arch, model.config)
    model.add_adapter("l", config=f"lora[attn_matrices={matrices}, alpha=16]")
    model.add_adapter("i", config=f"ia3[attn_matrices={matrices}]")
    randomize(model, "l")
    randomize(model, "i")
    seen: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}
    ids = torch.arange(3, 10).view(1, -1)
    with torch.no_grad():
        for name in (None, "l", "i"):
            # after the LoRA hook: the projection's input and adapted output in layer 0 (whose input no adapter
            # changes)
            handle = proj.register_forward_hook(lambda m, a, o, n=name: seen.__setitem__(n, (a[0], o)))
            with AdapterSetup(name):
                model(input_ids=ids)
            handle.remove()
    x, base = seen[None]
    delta, factor = seen["l"][1] - base, seen["i"][1] / base
    lora, ia3 = proj.loras["l"], proj.loras["i"]
    r = lora.lora_A.shape[0] // len(matrices)
    b_parts = lora.lora_B.split([len(rows[m]) for m in matrices])
    l_parts = ia3.lora_B.view(-1).split([len(rows[m]) for m in matrices])
    expected_delta, expected_factor = torch.zeros_like(base), torch.ones_like(base)
    for i, m in enumerate(matrices):
        a = lora.lora_A[i * r : (i + 1) * r]
        expected_delta[..., rows[m]] = x @ a.t() @ b_parts[i].t() * lora.scaling
        expected_factor[..., rows[m]] = l_parts[i] * ia3.scaling
    torch.testing.assert_close(delta, expected_delta, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(factor, expected_factor, atol=1e-4, rtol=1e-4)


# ---- parallel attention and feed-forward -----------------------------------------------------------------
def _capture(model, arch: str):
    """Hooks on layer 0 recording the values the bottleneck formulas need; returns (records, handles)."""
    layer = model.base_model.layers[0]
    seen: dict[str, torch.Tensor] = {}
    spots = {
        "x": (layer, "pre"),
        "attn_raw": (layer.post_attention_dropout, "pre"),
        "attn_adapted": (layer.post_attention_dropout, "out"),
        "mlp_raw": (layer.post_mlp_dropout, "pre"),
        "out": (layer, "out"),
    }
    handles = []
    for key, (module, kind) in spots.items():
        if kind == "pre":
            handles.append(module.register_forward_pre_hook(lambda m, a, k=key: seen.__setitem__(k, a[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, a, o, k=key: seen.__setitem__(k, o)))
    return seen, handles


def _seq_bn(adapter, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """A seq_bn adapter's sub-block output in a pre-LN layer: ``f(h + r) + h`` (the model adds ``r``)."""
    return adapter.adapter_up(adapter.adapter_down(h + r)) + h


@pytest.mark.parametrize("parallel", [True, False])
def test_gpt_neox_feed_forward_residual_follows_use_parallel_residual(parallel):
    """GPT-NeoX computes ``x + attn + mlp`` (parallel) or ``(x + attn) + mlp`` (sequential); either way the
    feed-forward adapter's residual stream is ``x`` plus the adapted attention output, and the layer output is
    that plus the feed-forward adapter's sub-block output."""
    config = tiny_config("gpt_neox")
    config.use_parallel_residual = parallel
    torch.manual_seed(0)
    model = AutoAdapterModel.from_config(config).eval()
    model.add_adapter("a", config=SeqBnConfig(mh_adapter=True, output_adapter=True))
    randomize(model, "a")
    model.set_active_adapters("a")
    seen, handles = _capture(model, "gpt_neox")
    ids = torch.randint(3, 90, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(input_ids=ids)
        layer = model.base_model.layers[0]
        attn = _seq_bn(layer.attention_adapters.adapters["a"], seen["attn_raw"], seen["x"])
        residual = seen["x"] + attn
        ffn = _seq_bn(layer.output_adapters.adapters["a"], seen["mlp_raw"], residual)
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(seen["attn_adapted"], attn)
    torch.testing.assert_close(seen["out"], residual + ffn)


def test_gptj_attention_adapters_run_first_whatever_the_order_they_were_added():
    """GPT-J's feed-forward adapters read the attention adapters' result, also when the feed-forward location got
    its hooks first."""
    outputs = []
    for order in (("m", "o"), ("o", "m")):
        model = tiny_model("gptj")
        for name in order:
            config = SeqBnConfig(mh_adapter=name == "m", output_adapter=name == "o", init_weights_seed=ord(name))
            model.add_adapter(name, config=config)
            randomize(model, name, seed=ord(name))
        model.set_active_adapters(Stack("m", "o"))
        with torch.no_grad():
            outputs.append(model(input_ids=torch.arange(3, 10).view(1, -1)).last_hidden_state)
    torch.testing.assert_close(outputs[0], outputs[1], atol=0, rtol=0)


# ---- sandwich norms (Gemma-2/3) and OLMo-2's post norms ----------------------------------------------------
def _record(module, key: str, seen: dict, kind: str):
    if kind == "pre":
        return module.register_forward_pre_hook(lambda m, a: seen.__setitem__(key, a[0]))
    # prepend: the value before any adapter hook on the module replaces it
    return module.register_forward_hook(lambda m, a, o: seen.__setitem__(key, o), prepend=kind == "raw")


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text"])
def test_sandwich_norm_adapter_without_original_ln_after_gives_the_sub_block_result(arch):
    """AdapterPlus (``original_ln_after=False``) on Gemma's feed-forward: ``z = post_norm(h + r)``, and the layer
    output is ``z + scaling * f(z)`` itself (the model's own post norm and residual add are replaced)."""
    model = tiny_model(arch)
    model.add_adapter("a", config=adapterkit.AdapterPlusConfig(reduction_factor=4))
    randomize(model, "a")
    model.set_active_adapters("a")
    layer = model.base_model.layers[0]
    seen: dict[str, torch.Tensor] = {}
    handles = [
        _record(layer.pre_feedforward_layernorm, "r", seen, "pre"),
        _record(layer.mlp, "h", seen, "raw"),
        _record(layer, "out", seen, "out"),
    ]
    with torch.no_grad():
        model(input_ids=torch.arange(3, 10).view(1, -1))
        adapter = layer.output_adapters.adapters["a"]
        z = layer.post_feedforward_layernorm.forward(seen["h"] + seen["r"])
        expected = z + adapter.scaling * adapter.adapter_up(adapter.adapter_down(z))
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(_main_output(seen["out"]), expected)


def _main_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def test_olmo2_adapters_see_the_normalised_sub_block_output():
    """OLMo-2 adds ``post_norm(attn(r))`` to ``r``; a seq_bn adapter there turns it into ``y + f(y + r)``."""
    model = tiny_model("olmo2")
    model.add_adapter("a", config=SeqBnConfig(mh_adapter=True, output_adapter=False))
    randomize(model, "a")
    model.set_active_adapters("a")
    layer = model.base_model.layers[0]
    seen: dict[str, torch.Tensor] = {}
    handles = [
        _record(layer, "r", seen, "pre"),
        _record(layer.post_attention_layernorm, "y", seen, "raw"),
        _record(layer.mlp, "after_attention", seen, "pre"),
    ]
    with torch.no_grad():
        model(input_ids=torch.arange(3, 10).view(1, -1))
        expected = seen["r"] + _seq_bn(layer.attention_adapters.adapters["a"], seen["y"], seen["r"])
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(seen["after_attention"], expected)


# ---- the multimodal Gemma-3 ---------------------------------------------------------------------------------
def test_gemma3_multimodal_adapters_live_in_the_language_model_and_run_with_images():
    model = tiny_model("gemma3")
    model.add_adapter("a", config=SeqBnConfig(mh_adapter=True, output_adapter=True))
    model.add_adapter("l", config="lora")
    randomize(model, "a")
    randomize(model, "l")
    keys = [k for k in model.state_dict() if ".a." in k or ".l." in k]
    assert keys and all(k.startswith("model.language_model.layers.") for k in keys), keys[:3]
    config = model.config
    tokens = config.mm_tokens_per_image
    image = torch.full((1, tokens), config.image_token_index)
    ids = torch.cat([torch.tensor([[5, 6]]), image, torch.tensor([[7, 8]])], dim=1)
    pixels = torch.randn(1, 3, config.vision_config.image_size, config.vision_config.image_size)
    with torch.no_grad():
        base = model(input_ids=ids, pixel_values=pixels).last_hidden_state
        model.set_active_adapters(Stack("a", "l"))
        adapted = model(input_ids=ids, pixel_values=pixels).last_hidden_state
        vision = model.base_model.get_image_features(pixel_values=pixels)
        model.set_active_adapters(None)
        vision_base = model.base_model.get_image_features(pixel_values=pixels)
    assert not torch.allclose(adapted, base, atol=1e-4)
    torch.testing.assert_close(_main_output(vision), _main_output(vision_base), atol=0, rtol=0)
