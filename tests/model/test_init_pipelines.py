"""transformers pipelines (and ``generate()``) on models given adapters by `adapterkit.init`, and on adapter
models through their active head, with an adapter active.

The reference for "the adapter is applied" is independent of adapterkit's forward: a plain transformers
model of the same class holding the weights with the LoRA adapter merged in (`init` on every class is
tests/model/test_init_classes.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, pipeline

import adapterkit
from adapterkit import AutoAdapterModel
from tiny import DECODERS, tiny_config

VOCAB = 99


def _strong_lora(model, name: str = "a") -> None:
    """Add LoRA adapter ``name`` with weights large enough to change predictions, and activate it."""
    model.add_adapter(name, config="lora", set_active=True)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if f"loras.{name}." in key:
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)


def _merged_reference(model, class_name: str):
    """A plain transformers model of ``class_name`` holding ``model``'s weights with adapter ``a`` merged."""
    model.merge_adapter("a")
    plain = getattr(transformers, class_name)(model.config).eval()
    state = plain.state_dict()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in state})
    model.reset_adapter()
    return plain


def _pair(arch: str, class_name: str):
    """(model with an active adapter, merged plain reference, the plain model without the adapter)."""
    torch.manual_seed(0)
    original = getattr(transformers, class_name)(tiny_config(arch)).eval()
    model = adapterkit.init(getattr(transformers, class_name)(original.config).eval())
    model.load_state_dict(original.state_dict())
    _strong_lora(model)
    return model, _merged_reference(model, class_name), original


_WORDS = "the a movie was good bad great awful film plot actor who is where paris city lives in".split()


def _tokenizer(encoder: bool) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the tiny models' 99 ids: [PAD]=0, [CLS]=1 (bos), [SEP]=2 (eos), [MASK]=3,
    [UNK]=4, then words. Encoders get ``[CLS] ... [SEP]``; decoders get the text as it is."""
    specials = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]
    words = _WORDS + [f"w{i}" for i in range(VOCAB - len(specials) - len(_WORDS))]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if encoder:
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        unk_token="[UNK]", bos_token="[CLS]", eos_token="[SEP]", model_max_length=64,
    )


def _numbers(result: Any) -> list[float]:
    """Every number in a pipeline result, in order (scores, token ids, features)."""
    if isinstance(result, dict):
        return [x for key in sorted(result) for x in _numbers(result[key])]
    if isinstance(result, (list, tuple)):
        return [x for item in result for x in _numbers(item)]
    if isinstance(result, (torch.Tensor, np.ndarray)):
        return [float(x) for x in np.asarray(result).ravel()]
    if isinstance(result, (int, float, np.floating, np.integer)) and not isinstance(result, bool):
        return [float(result)]
    return []


def _labels(result: Any) -> list[str]:
    if isinstance(result, dict):
        return [x for key in sorted(result) for x in _labels(result[key])]
    if isinstance(result, (list, tuple)):
        return [x for item in result for x in _labels(item)]
    return [result] if isinstance(result, str) else []


def _assert_same_result(actual: Any, expected: Any) -> None:
    assert _labels(actual) == _labels(expected)
    np.testing.assert_allclose(_numbers(actual), _numbers(expected), atol=1e-5, rtol=0)


GENERATE = dict(max_new_tokens=6, do_sample=False, return_tensors=True)
PIPELINES = [
    ("text-classification", "bert", "BertForSequenceClassification", "the movie was good", {}),
    ("text-classification", "llama", "LlamaForSequenceClassification", "the movie was good", {}),
    ("token-classification", "bert", "BertForTokenClassification", "the actor lives in paris", {}),
    ("fill-mask", "bert", "BertForMaskedLM", "the movie was [MASK]", {}),
    ("fill-mask", "roberta", "RobertaForMaskedLM", "the movie was [MASK]", {}),
    ("feature-extraction", "bert", "BertModel", "the movie was good", {}),
    ("text-generation", "gpt2", "GPT2LMHeadModel", "the movie was", GENERATE),
    ("text-generation", "llama", "LlamaForCausalLM", "the movie was", GENERATE),
]


@pytest.mark.parametrize("task,arch,class_name,text,kwargs", PIPELINES)
def test_pipelines_on_an_initialised_model_run_the_active_adapter(task, arch, class_name, text, kwargs):
    model, reference, original = _pair(arch, class_name)
    tokenizer = _tokenizer(encoder=arch not in DECODERS)
    ours, expected, without = (pipeline(task, model=m, tokenizer=tokenizer)(text, **kwargs)
                               for m in (model, reference, original))
    _assert_same_result(ours, expected)
    assert _labels(ours) != _labels(without) or not np.allclose(_numbers(ours), _numbers(without), atol=1e-4)


def test_generate_on_an_initialised_model_runs_the_active_adapter():
    model, reference, original = _pair("llama", "LlamaForCausalLM")
    ids = torch.randint(5, VOCAB, (2, 4), generator=torch.Generator().manual_seed(3))
    ours, expected, without = (m.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
                               for m in (model, reference, original))
    assert torch.equal(ours, expected) and not torch.equal(ours, without)


ADAPTER_MODEL_PIPELINES = [
    ("text-classification", "bert", "BertForSequenceClassification", "the movie was good", {}),
    ("token-classification", "bert", "BertForTokenClassification", "the actor lives in paris", {}),
    ("fill-mask", "bert", "BertForMaskedLM", "the movie was [MASK]", {}),
    ("text-generation", "gpt2", "GPT2LMHeadModel", "the movie was", GENERATE),
]


@pytest.mark.parametrize("task,arch,class_name,text,kwargs", ADAPTER_MODEL_PIPELINES)
def test_pipelines_on_an_adapter_model_use_its_active_head(tmp_path, task, arch, class_name, text, kwargs):
    torch.manual_seed(0)
    static = getattr(transformers, class_name)(tiny_config(arch)).eval()
    static.save_pretrained(tmp_path / "static")
    model = AutoAdapterModel.from_pretrained(tmp_path / "static").eval()  # head "default", converted
    _strong_lora(model)
    model.save_adapter(tmp_path / "a", "a", with_head=False)
    adapterkit.init(static).load_adapter(tmp_path / "a", set_active=True)
    tokenizer = _tokenizer(encoder=arch not in DECODERS)
    ours, expected = (pipeline(task, model=m, tokenizer=tokenizer)(text, **kwargs) for m in (model, static))
    _assert_same_result(ours, expected)
