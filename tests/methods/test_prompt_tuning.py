"""Prompt tuning: prompts inserted into the embedding output, inputs (mask, token labels, answer positions) made
to fit, encoder architectures (decoders refused), per-row composition, initialisation, persistence, training."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification

import adapterkit
from adapterkit import (
    AdapterConfig,
    AdapterSetup,
    AutoAdapterModel,
    Average,
    BatchSplit,
    MultiTask,
    Parallel,
    PromptTuningConfig,
    Split,
    Stack,
)
from tiny import ARCHS, DECODERS, tiny_config, tiny_inputs, tiny_model

ENCODERS = [a for a in ARCHS if a not in DECODERS]
B, T = 4, 9


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def _hidden(model, inputs=None, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.base_model(**(inputs or tiny_inputs(batch=B, seq=T)), **kwargs).last_hidden_state


def _layer_inputs(model) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    model._adapter_target.layers[0].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach()), with_kwargs=True
    )
    return seen


def _row_alone(model, row: int, **kwargs) -> torch.Tensor:
    """Row ``row`` of the tiny inputs run on its own, without its padding."""
    inputs = tiny_inputs(batch=B, seq=T)
    n = int(inputs["attention_mask"][row].sum())
    alone = {"input_ids": inputs["input_ids"][row : row + 1, :n], "attention_mask": torch.ones(1, n, dtype=torch.long)}
    return _hidden(model, alone, **kwargs)[0]


def _prompts(model, *specs: tuple[str, int, str]) -> None:
    for name, length, combine in specs:
        model.add_adapter(name, config=PromptTuningConfig(prompt_length=length, combine=combine))


# ---- config ------------------------------------------------------------------------------------------------
def test_config_alias_and_validation():
    assert AdapterConfig.load("prompt_tuning") == PromptTuningConfig()
    assert PromptTuningConfig().to_dict()["architecture"] == "prompt_tuning"
    assert AdapterConfig.load(PromptTuningConfig(prompt_length=3).to_dict()) == PromptTuningConfig(prompt_length=3)
    with pytest.raises(ValueError, match="prompt_init_text=None is not allowed with prompt_init='from_string'"):
        PromptTuningConfig(prompt_init="from_string")
    with pytest.raises(
        ValueError, match=r"combine='suffix' is not allowed; choose one of \['prefix', 'prefix_after_bos'\]"
    ):
        PromptTuningConfig(combine="suffix")
    with pytest.raises(ValueError, match="prompt_length=0"):
        PromptTuningConfig(prompt_length=0)


@pytest.mark.parametrize("arch", DECODERS)
def test_decoders_are_refused_at_add_adapter(arch):
    model = tiny_model(arch)
    with pytest.raises(ValueError, match=rf"prompt tuning is not available for '{arch}' \(decoder-only\)"):
        model.add_adapter("p", config="prompt_tuning")
    assert "p" not in model.adapters_config and model._adapter_target.input_hooks == {}


# ---- encoders ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ENCODERS)
def test_forward_mask_activation_and_delete(arch, attn):
    model = tiny_model(arch, attn)
    base = _hidden(model)
    model.add_adapter("p", config="prompt_tuning[prompt_length=3]")
    assert set(model.get_adapter("p")) == {-1}
    assert torch.equal(_hidden(model), base)
    with AdapterSetup("p"):
        in_context = _hidden(model)
    model.set_active_adapters("p")
    active = _hidden(model)
    assert active.shape == (B, T + 3, base.shape[-1]) and torch.equal(in_context, active)
    for row in (1, 3):  # padded rows equal running them alone: the mask covers the prompt and the padding
        alone = _row_alone(model, row)
        _close(active[row, : alone.shape[0]], alone)
    model.delete_adapter("p")
    assert torch.equal(_hidden(model), base)
    assert not hasattr(model.base_model, "prompt_tuning") and model._adapter_target.input_hooks == {}
    guards = {id(model.base_model), *map(id, model._adapter_target.layers)}
    assert not [
        m for m in model.base_model.modules() if (m._forward_hooks or m._forward_pre_hooks) and id(m) not in guards
    ]


@pytest.mark.parametrize("combine", ["prefix", "prefix_after_bos"])
def test_the_prompt_goes_after_the_embeddings(combine):
    model = tiny_model("bert")
    model.add_adapter("p", config=PromptTuningConfig(prompt_length=2, combine=combine), set_active=True)
    seen = _layer_inputs(model)
    _hidden(model)
    model.set_active_adapters(None)
    _hidden(model)
    prompted, embedded = seen
    prompt = model.base_model.prompt_tuning.prompt_tunings["p"].prompt_embedding.weight.detach()
    at = 0 if combine == "prefix" else 1
    expected = torch.cat([embedded[:, :at], prompt.expand(B, -1, -1), embedded[:, at:]], dim=1)
    assert torch.equal(prompted, expected)


def test_stack_inserts_every_prompt_in_order():
    model = tiny_model("roberta")
    _prompts(model, ("a", 2, "prefix"), ("b", 3, "prefix"))
    seen = _layer_inputs(model)
    model.set_active_adapters(Stack("a", "b"))
    _hidden(model)
    model.set_active_adapters(None)
    _hidden(model)
    pool = model.base_model.prompt_tuning.prompt_tunings
    pa, pb = (pool[n].prompt_embedding.weight.detach().expand(B, -1, -1) for n in "ab")
    assert torch.equal(seen[0], torch.cat([pb, pa, seen[1]], dim=1))


def test_rows_get_their_own_prompts():
    model = tiny_model("bert")
    _prompts(model, ("a", 2, "prefix"), ("b", 4, "prefix_after_bos"))
    alone = {}
    for name in ("a", "b", None):
        model.set_active_adapters(name)
        alone[name] = _hidden(model)
    per_row = ["b", "a", None, "b"]

    def check(out: torch.Tensor) -> None:
        assert out.shape[1] == T + 4  # rows with shorter prompts are padded at the end
        for i, t in enumerate(per_row):
            _close(out[i, : alone[t].shape[1]], alone[t][i])

    model.set_active_adapters(None)
    check(_hidden(model, adapter_names=per_row))
    model.set_active_adapters(MultiTask("a", "b", None))
    check(_hidden(model, task_ids=per_row))
    model.set_active_adapters(BatchSplit("b", "a", None, "b", batch_sizes=[1, 1, 1, 1]))
    check(_hidden(model))
    ids = tiny_inputs(batch=B, seq=T)["input_ids"][:, :5]  # no padding, no mask: the prompts' padding gets one
    model.set_active_adapters(None)
    alone = {t: _hidden(model, {"input_ids": ids}, adapter_names=[t] * B) for t in ("a", "b", None)}
    mixed = _hidden(model, {"input_ids": ids}, adapter_names=per_row)
    for i, t in enumerate(per_row):
        _close(mixed[i, : alone[t].shape[1]], alone[t][i])


@pytest.mark.parametrize("block", [Parallel("a", "b"), Average("a", "b"), Split("a", "b", splits=[4, 5])])
def test_blocks_that_cannot_hold_prompts_are_refused(block):
    model = tiny_model("bert")
    _prompts(model, ("a", 2, "prefix"), ("b", 2, "prefix"))
    with pytest.raises(ValueError, match=rf"adapter 'a' \(prompt_tuning\) cannot run inside {type(block).__name__}"):
        model.set_active_adapters(block)


# ---- heads and labels -------------------------------------------------------------------------------------
def test_token_labels_and_answer_positions_follow_the_tokens():
    model = tiny_model("bert")
    model.add_adapter("p", config=PromptTuningConfig(prompt_length=3, combine="prefix_after_bos"), set_active=True)
    model.add_masked_lm_head("mlm")
    model.add_qa_head("qa")
    inputs = tiny_inputs(batch=B, seq=T)
    labels = torch.where(inputs["attention_mask"].bool(), inputs["input_ids"], -100)
    with torch.no_grad():
        out = model(**inputs, labels=labels, head="mlm")
        padded = torch.cat([labels[:, :1], torch.full((B, 3), -100), labels[:, 1:]], dim=1)
        expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), padded.reshape(-1))
        _close(out.loss, expected)
        start, end = torch.tensor([0, 1, 2, 4]), torch.tensor([0, 3, 4, 6])
        qa = model(**inputs, start_positions=start, end_positions=end, head="qa")
        moved = lambda p: torch.where(p >= 1, p + 3, p)  # noqa: E731
        ce = torch.nn.functional.cross_entropy
        _close(qa.loss, (ce(qa.start_logits, moved(start)) + ce(qa.end_logits, moved(end))) / 2)


def test_classification_head_reads_the_first_prompt_vector_and_plain_models_work():
    torch.manual_seed(0)
    model = adapterkit.init(BertForSequenceClassification(tiny_config("bert"))).eval()
    model.add_adapter("p", config="prompt_tuning[prompt_length=2]", set_active=True)
    inputs = tiny_inputs(batch=B, seq=T)
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = model.bert(**inputs).last_hidden_state
    assert hidden.shape[1] == T + 2
    _close(logits, model.classifier(model.bert.pooler(hidden)))


# ---- initialisation, persistence, training -------------------------------------------------------------------
class _Tokenizer:
    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [len(word) for word in text.split()]}


def test_from_string_initialisation(caplog):
    model = tiny_model("bert")
    config = PromptTuningConfig(prompt_length=5, prompt_init="from_string", prompt_init_text="a bb ccc")
    model.add_adapter("p", config=config, tokenizer=_Tokenizer())
    words = model.base_model.get_input_embeddings().weight
    prompt = model.base_model.prompt_tuning.prompt_tunings["p"].prompt_embedding.weight
    assert torch.equal(prompt, words[[1, 2, 3, 1, 2]])
    model.add_adapter("q", config=config)  # no tokenizer anywhere: uniform, with a warning
    assert "needs a tokenizer" in caplog.text
    assert model.base_model.prompt_tuning.prompt_tunings["q"].prompt_embedding.weight.abs().max() <= 0.5
    with pytest.raises(TypeError, match="tokenizer"):
        model.add_adapter("s", config="seq_bn", tokenizer=_Tokenizer())
    assert "s" not in model.adapters_config


def test_seed_save_load_and_training(tmp_path):
    model = tiny_model("distilbert")
    model.add_adapter("p", config="prompt_tuning[prompt_length=3, init_weights_seed=7, random_uniform_scale=0.1]")
    model.add_adapter("q", config="prompt_tuning[prompt_length=3, init_weights_seed=7, random_uniform_scale=0.1]")
    pool = model.base_model.prompt_tuning.prompt_tunings
    assert torch.equal(pool["p"].prompt_embedding.weight, pool["q"].prompt_embedding.weight)
    assert pool["p"].prompt_embedding.weight.abs().max() <= 0.1
    model.add_classification_head("p", num_labels=2)
    model.train_adapter("p")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"distilbert.prompt_tuning.prompt_tunings.p.prompt_embedding.weight"} | {
        n for n in trainable if n.startswith("heads.p.")
    }
    out = model(**tiny_inputs(batch=B, seq=T), labels=torch.tensor([0, 1, 1, 0]))
    out.loss.backward()
    assert pool["p"].prompt_embedding.weight.grad.abs().sum() > 0
    model.eval()
    model.set_active_adapters("p")
    expected = _hidden(model)
    model.save_adapter(tmp_path / "p", "p")
    other = tiny_model("distilbert")
    info: dict = {}
    other.load_adapter(tmp_path / "p", load_as="r", set_active=True, loading_info=info)
    assert info == {"missing_keys": [], "unexpected_keys": []}
    _close(_hidden(other), expected)
    model.save_pretrained(tmp_path / "full")
    full = AutoAdapterModel.from_pretrained(tmp_path / "full").eval()
    full.set_active_adapters("p")
    _close(_hidden(full), expected)


def test_reft_positions_count_the_prompt():
    """The layers see the prompted sequence, and ReFT reads its positions from the extended mask."""
    model = tiny_model("bert")
    model.add_adapter("p", config="prompt_tuning[prompt_length=2]")
    model.add_adapter("r", config="noreft[prefix_positions=0, suffix_positions=1, dropout=0.0]")
    with torch.no_grad():
        for p in model.get_adapter("r")[0]["output_reft"].parameters():
            p.normal_(0, 0.3)
    model.set_active_adapters(Stack("p", "r"))
    seen: list[torch.Tensor] = []
    model._adapter_target.layers[0].register_forward_hook(lambda m, a, o: seen.append(o))
    _hidden(model)
    model.set_active_adapters("p")
    _hidden(model)
    moved = (seen[0] - seen[1]).abs().amax(-1) > 0
    last = tiny_inputs(batch=B, seq=T)["attention_mask"].sum(1) + 2 - 1
    assert torch.equal(moved.nonzero()[:, 1], last)


def test_multiple_choice_inputs_get_the_prompt_per_choice():
    model = tiny_model("bert")
    model.add_adapter("p", config="prompt_tuning[prompt_length=2]", set_active=True)
    model.add_multiple_choice_head("mc", num_choices=2)
    inputs = tiny_inputs(batch=B, seq=T)
    choices = {k: torch.stack([v, v.flip(0)], dim=1) for k, v in inputs.items()}  # (B, 2, T)
    with torch.no_grad():
        logits = model(**choices, head="mc").logits
        flat = model.base_model(**{k: v.reshape(2 * B, T) for k, v in choices.items()}).last_hidden_state
    assert logits.shape == (B, 2)
    _close(logits.reshape(-1), model.heads["mc"].mlp(flat[:, 0]).reshape(-1))
