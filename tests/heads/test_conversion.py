"""Static heads of transformers' ``XxxForY`` classes become flexible heads with the same outputs: from a
checkpoint (`AutoAdapterModel.from_pretrained`, head ``default``) and from an adapter folder saved by a
static-head model (`load_adapter` / `load_head`)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.auto import modeling_auto

import adapterkit
from adapterkit import AutoAdapterModel
from adapterkit.heads import conversion
from adapterkit.heads.conversion import FromConfig, StaticHead, kind_of, register_static_head, static_head_conversion
from adapterkit.io import HEAD_CONFIG_NAME, HEAD_SAFE_WEIGHTS_NAME
from tiny import DECODERS, randomize, tiny_config, tiny_inputs

ARCHS_HERE = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "gpt2", "llama", "mistral", "qwen2")
TEXT_KINDS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice",
              "ForMaskedLM", "ForCausalLM")
OUTPUTS = ("logits", "start_logits", "end_logits")


def _head_classes(arch: str) -> list[str]:
    """Every transformers class of ``arch`` that the auto classes know with a head of a text kind, or with a
    conversion row of its own."""
    names = {
        name
        for attr in dir(modeling_auto)
        if attr.startswith("MODEL_FOR_") and attr.endswith("MAPPING_NAMES")
        for model_type, name in getattr(modeling_auto, attr).items()
        if model_type == arch and isinstance(name, str) and hasattr(transformers, name)
    }
    return sorted(n for n in names if kind_of(n) in TEXT_KINDS or (arch, n) in conversion.STATIC_HEADS)


PAIRS = [(arch, name) for arch in ARCHS_HERE for name in _head_classes(arch)]


def _config(arch: str, class_name: str):
    config = tiny_config(arch)
    kind = kind_of(class_name)
    if kind == "ForCausalLM" and arch not in DECODERS:
        config.is_decoder = True
    if kind in ("ForSequenceClassification", "ForTokenClassification"):
        config.id2label = {0: "neg", 1: "pos", 2: "mid"}
        config.label2id = {"neg": 0, "pos": 1, "mid": 2}
    return config


def _static(arch: str, class_name: str):
    """A seeded static-head model whose every weight (heads' zero biases too) is moved off its init."""
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(_config(arch, class_name)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=g) * 0.05)
    return model


def _inputs(class_name: str) -> dict[str, torch.Tensor]:
    inputs = tiny_inputs()
    if kind_of(class_name) == "ForMultipleChoice":  # (batch, choices, seq)
        inputs = {k: torch.stack([v, v.roll(1, 0)], 1) for k, v in inputs.items()}
    return inputs


def _assert_same_outputs(expected, actual) -> None:
    compared = [k for k in OUTPUTS if expected.get(k) is not None]
    assert compared
    for key in compared:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-5, rtol=0)


def test_every_head_class_of_these_architectures_has_a_conversion():
    assert len(PAIRS) > len(ARCHS_HERE) * 3
    missing = [(arch, name) for arch, name in PAIRS if static_head_conversion(name, tiny_config(arch)) is None]
    assert not missing


@pytest.mark.parametrize("arch,class_name", PAIRS)
def test_from_pretrained_converts_the_static_head(tmp_path, arch, class_name):
    static = _static(arch, class_name)
    static.save_pretrained(tmp_path)
    model = AutoAdapterModel.from_pretrained(tmp_path).eval()
    assert model.active_head == "default"
    with torch.no_grad():
        _assert_same_outputs(static(**_inputs(class_name)), model(**_inputs(class_name)))
    if "label2id" in model.heads["default"].config and kind_of(class_name) != "ForMultipleChoice":
        assert model.config.id2label == static.config.id2label


@pytest.mark.parametrize("arch,class_name", PAIRS)
def test_load_adapter_converts_a_head_saved_by_a_static_head_model(tmp_path, arch, class_name):
    static = adapterkit.init(_static(arch, class_name))
    static.add_adapter("a", config="lora", set_active=True)
    randomize(static, "a")
    with torch.no_grad():
        expected = static(**_inputs(class_name))
    static.save_adapter(tmp_path, "a")
    torch.manual_seed(5)
    model = AutoAdapterModel.from_config(static.config).eval()
    model.base_model.load_state_dict(static.base_model.state_dict(), strict=False)  # same base, no adapter
    model.load_adapter(tmp_path, set_active=True)
    assert model.active_head == "a"
    with torch.no_grad():
        _assert_same_outputs(expected, model(**_inputs(class_name)))


def _bert_static_adapter(tmp_path, id2label=None):
    static = _static("bert", "BertForSequenceClassification")
    if id2label:
        static.config.id2label, static.config.label2id = id2label, {v: k for k, v in id2label.items()}
    static = adapterkit.init(static)
    static.add_adapter("a", config="lora")
    static.save_adapter(tmp_path, "a")
    torch.manual_seed(5)
    return static, AutoAdapterModel.from_config(tiny_config("bert")).eval()


def test_labels_are_restored_and_can_be_overridden(tmp_path):
    _, model = _bert_static_adapter(tmp_path, {0: "neg", 1: "pos", 2: "mid"})
    model.load_adapter(tmp_path, set_active=True)
    assert model.heads["a"].config["label2id"] == {"neg": 0, "pos": 1, "mid": 2}
    assert model.config.id2label == {0: "neg", 1: "pos", 2: "mid"}
    model.load_adapter(tmp_path, load_as="b", id2label={0: "x", 1: "y", 2: "z"}, set_active=True)
    assert model.get_labels() == ["x", "y", "z"] and model.config.id2label == {0: "x", 1: "y", 2: "z"}


def test_load_head_converts_a_static_head_under_load_as(tmp_path):
    static, model = _bert_static_adapter(tmp_path)
    with pytest.raises(ValueError, match="load_as"):
        model.load_head(tmp_path)
    assert model.load_head(tmp_path, load_as="cls") == "cls"
    torch.testing.assert_close(model.heads["cls"][1].weight, static.classifier.weight, atol=0, rtol=0)
    assert model.heads["cls"].config["use_pooler"] is True


def test_weights_that_do_not_fit_leave_the_model_as_it_was(tmp_path):
    _, model = _bert_static_adapter(tmp_path)
    model.add_classification_head("a", num_labels=3)
    before = {k: v.clone() for k, v in model.heads["a"].state_dict().items()}
    weights = load_file(tmp_path / HEAD_SAFE_WEIGHTS_NAME)
    save_file({**weights, "cls.seq_relationship.weight": torch.zeros(2, 32)}, tmp_path / HEAD_SAFE_WEIGHTS_NAME)
    with pytest.raises(ValueError, match="unexpected.*cls.seq_relationship"):
        model.load_adapter(tmp_path)
    assert "a" not in model.adapters_config and model.heads["a"].config["layers"] == 2 and model.active_head == "a"
    for key, value in model.heads["a"].state_dict().items():
        torch.testing.assert_close(value, before[key], atol=0, rtol=0)


def test_head_of_another_model_type_is_refused(tmp_path):
    _, model = _bert_static_adapter(tmp_path)
    meta = json.loads((tmp_path / HEAD_CONFIG_NAME).read_text())
    (tmp_path / HEAD_CONFIG_NAME).write_text(json.dumps({**meta, "model_type": "roberta"}))
    with pytest.raises(ValueError, match="model type 'roberta'"):
        model.load_head(tmp_path, load_as="x")


def test_multi_label_problem_type_gives_a_multilabel_head(tmp_path):
    static = _static("bert", "BertForSequenceClassification")
    static.config.problem_type = "multi_label_classification"
    static.save_pretrained(tmp_path)
    model = AutoAdapterModel.from_pretrained(tmp_path)
    assert model.heads["default"].config["head_type"] == "multilabel_classification"


def test_converted_model_round_trips_without_converting_again(tmp_path):
    static = _static("roberta", "RobertaForSequenceClassification")
    static.save_pretrained(tmp_path / "static")
    model = AutoAdapterModel.from_pretrained(tmp_path / "static").eval()
    model.save_pretrained(tmp_path / "flex")
    assert json.loads((tmp_path / "flex" / "config.json").read_text())["architectures"] == ["RobertaAdapterModel"]
    again = AutoAdapterModel.from_pretrained(tmp_path / "flex").eval()
    assert list(again.heads) == ["default"]
    with torch.no_grad():
        _assert_same_outputs(static(**tiny_inputs()), again(**tiny_inputs(), head="default"))


def test_sharded_checkpoints_and_legacy_layer_norm_names(tmp_path):
    static = _static("bert", "BertForMaskedLM")
    static.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["cls.predictions.transform.LayerNorm.weight"]
    tensors = load_file(tmp_path / shard)
    for new, old in (("weight", "gamma"), ("bias", "beta")):  # TF-converted BERT checkpoints
        key = f"cls.predictions.transform.LayerNorm.{new}"
        if key in tensors:
            tensors[key.replace(new, old)] = tensors.pop(key)
            index["weight_map"][key.replace(new, old)] = index["weight_map"].pop(key)
    save_file(tensors, tmp_path / shard, metadata={"format": "pt"})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert len(set(index["weight_map"].values())) > 1
    model = AutoAdapterModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        _assert_same_outputs(static(**tiny_inputs()), model(**tiny_inputs()))


def test_electra_multiple_choice_with_a_summary_it_cannot_express_is_refused(tmp_path):
    static = _static("electra", "ElectraForMultipleChoice")
    static.config.summary_type = "mean"
    static.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="summary_type='first'"):
        AutoAdapterModel.from_pretrained(tmp_path)


def test_a_class_without_a_row_loads_its_base_model_only(tmp_path):
    _static("bert", "BertForPreTraining").save_pretrained(tmp_path)
    assert dict(AutoAdapterModel.from_pretrained(tmp_path).heads) == {}


class MyBertClassifier(transformers.BertPreTrainedModel):
    """A user's own head class: the first token through one Linear named ``head``."""

    def __init__(self, config):
        super().__init__(config)
        self.bert = transformers.BertModel(config, add_pooling_layer=False)
        self.head = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.bert(input_ids, attention_mask=attention_mask).last_hidden_state
        return SequenceClassifierOutput(logits=self.head(hidden[:, 0]))


def test_register_a_row_for_a_class_outside_the_suffix_rule(tmp_path, monkeypatch):
    monkeypatch.setattr(conversion, "STATIC_HEADS", dict(conversion.STATIC_HEADS))
    register_static_head(
        "bert",
        "MyBertClassifier",
        StaticHead(
            (None, "head"),
            {"layers": 1, "activation_function": None, "dropout_prob": FromConfig("classifier_dropout", default=0.0)},
            head_type="classification",
        ),
    )
    torch.manual_seed(0)
    static = MyBertClassifier(_config("bert", "BertForSequenceClassification")).eval()
    static.save_pretrained(tmp_path)
    model = AutoAdapterModel.from_pretrained(tmp_path).eval()
    assert model.heads["default"].config["dropout_prob"] == 0.0 and model.get_labels() == ["neg", "pos", "mid"]
    with torch.no_grad():
        _assert_same_outputs(static(**tiny_inputs()), model(**tiny_inputs()))
    with pytest.raises(ValueError, match="neither a head kind"):
        register_static_head("bert", "ForSomethingElse", StaticHead(("x",)))


@pytest.mark.parametrize(
    "name,kind",
    [
        ("BertLMHeadModel", "ForCausalLM"),
        ("GPT2LMHeadModel", "ForCausalLM"),
        ("LlamaForCausalLM", "ForCausalLM"),
        ("T5ForConditionalGeneration", "ForConditionalGeneration"),
        ("ViTForImageClassification", "ForImageClassification"),
        ("BertForSequenceClassification", "ForSequenceClassification"),
        ("BertModel", None),
        ("GPT2DoubleHeadsModel", None),
    ],
)
def test_kind_of_class_names(name, kind):
    assert kind_of(name) == kind
