"""generate() with Parallel and per-row routing: token-exact against generating with each adapter alone,
for plain transformers models given adapters by `init` and for adapter models with causal_lm heads."""

from __future__ import annotations

import pytest
import torch
from transformers import BertModel, GPT2LMHeadModel, LlamaForCausalLM

from adapterkit import AdapterSetup, Parallel, init
from tiny import randomize, tiny_config, tiny_model

LM_CLASSES = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM}
GREEDY = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)


def _prompt() -> tuple[torch.Tensor, torch.Tensor]:
    """Two left-padded prompts."""
    ids = torch.randint(3, 99, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    return ids * mask, mask


def _model(arch: str, kind: str, config: str = "seq_bn"):
    """``kind="plain"``: ``init(XxxForCausalLM)``; ``kind="heads"``: an adapter model with a causal_lm head
    per adapter (heads made different from each other, so a wrong head shows)."""
    if kind == "plain":
        torch.manual_seed(0)
        model = init(LM_CLASSES[arch](tiny_config(arch))).eval()
    else:
        model = tiny_model(arch)
    for name in ("a", "b"):
        model.add_adapter(name, config=config)
        randomize(model, name, seed=ord(name))
        if kind == "heads":
            model.add_causal_lm_head(name)
            g = torch.Generator().manual_seed(ord(name))
            with torch.no_grad():
                for param in model.heads[name].parameters():
                    if param is not model.get_input_embeddings().weight:
                        param.add_(torch.randn(param.shape, generator=g) * 0.5)
    return model


def _alone(model, ids, mask, **kwargs) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("a", "b"):
        model.set_active_adapters(name)
        out[name] = model.generate(ids, attention_mask=mask, **kwargs)
    assert not torch.equal(out["a"], out["b"]), "adapters too weak to tell apart"
    return out


@pytest.mark.parametrize("kind", ["plain", "heads"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_parallel_generation_equals_each_adapter_alone(arch, kind):
    model = _model(arch, kind)
    ids, mask = _prompt()
    alone = _alone(model, ids, mask, **GREEDY)
    model.set_active_adapters(Parallel("a", "b"))
    out = model.generate(ids, attention_mask=mask, **GREEDY)
    assert out.shape == (4, ids.shape[1] + 5)  # channel-major: rows 0-1 channel "a", rows 2-3 channel "b"
    assert torch.equal(out[:2], alone["a"]) and torch.equal(out[2:], alone["b"])
    model.set_active_adapters(None)
    with AdapterSetup(Parallel("b", "a")):
        swapped = model.generate(input_ids=ids, attention_mask=mask, **GREEDY)
    assert torch.equal(swapped[:2], alone["b"]) and torch.equal(swapped[2:], alone["a"])


@pytest.mark.parametrize(("arch", "kind"), [("gpt2", "plain"), ("llama", "heads")])
def test_per_row_routing_equals_each_row_alone(arch, kind):
    model = _model(arch, kind, config="lora")
    ids, mask = _prompt()
    alone = _alone(model, ids, mask, **GREEDY)
    model.set_active_adapters(None)
    out = model.generate(ids, attention_mask=mask, adapter_names=["b", "a"], **GREEDY)
    assert torch.equal(out[0], alone["b"][0]) and torch.equal(out[1], alone["a"][1])


def test_routing_and_parallel_with_beams_and_several_return_sequences():
    model = _model("gpt2", "heads")
    ids, mask = _prompt()
    beams = dict(GREEDY, num_beams=2, num_return_sequences=2)
    alone = _alone(model, ids, mask, **beams)
    model.set_active_adapters(None)
    routed = model.generate(ids, attention_mask=mask, adapter_names=["b", "a"], **beams)
    assert torch.equal(routed[:2], alone["b"][:2]) and torch.equal(routed[2:], alone["a"][2:])
    model.set_active_adapters(Parallel("a", "b"))
    out = model.generate(ids, attention_mask=mask, **beams)
    assert torch.equal(out[:4], alone["a"]) and torch.equal(out[4:], alone["b"])


def test_parallel_generation_needs_a_prompt_tensor():
    model = _model("gpt2", "plain")
    model.set_active_adapters(Parallel("a", "b"))
    with pytest.raises(ValueError, match="Parallel setup of 2 channels needs the prompt as a tensor"):
        model.generate(max_new_tokens=2, pad_token_id=0)


def test_only_generative_models_get_generate():
    assert not hasattr(init(BertModel(tiny_config("bert"))), "generate")
    assert tiny_model("bert").can_generate()
