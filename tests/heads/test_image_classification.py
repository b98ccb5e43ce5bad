"""The ``image_classification`` head (ViT, BEiT): what it reads, its losses, training, saving."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.modeling_outputs import ImageClassifierOutput

import adapterkit
from adapterkit import AutoAdapterModel
from tiny import randomize, tiny_config, tiny_inputs, tiny_model

TOL = dict(atol=1e-6, rtol=0)


def _head_input(model, arch: str, use_pooler: bool) -> torch.Tensor:
    with torch.no_grad():
        out = model.base_model(**tiny_inputs(arch=arch))
    return out.pooler_output if use_pooler else out.last_hidden_state[:, 0]


@pytest.mark.parametrize(("arch", "use_pooler", "reads_pooler"), [
    ("vit", None, False),  # the class token
    ("vit", True, True),  # ViT's pooler: dense + tanh on the class token
    ("beit", None, True),  # BEiT's default
    ("beit", False, True),  # BEiT's heads read its mean-pooling pooler whatever use_pooler says (AdapterHub's)
])
def test_head_reads_class_token_or_pooler(arch, use_pooler, reads_pooler):
    model = tiny_model(arch)
    kwargs = {} if use_pooler is None else {"use_pooler": use_pooler}
    model.add_image_classification_head("h", num_labels=3, layers=2, **kwargs)
    head = model.heads["h"]
    assert head.config["head_type"] == "image_classification" and head.config["layers"] == 2
    assert head.config["use_pooler"] == (use_pooler if use_pooler is not None else arch == "beit")
    with torch.no_grad():
        out = model(**tiny_inputs(arch=arch))
        manual = head.mlp(_head_input(model, arch, reads_pooler))
    assert isinstance(out, ImageClassifierOutput) and out.logits.shape == (3, 3)
    torch.testing.assert_close(out.logits, manual, **TOL)


@pytest.mark.parametrize(("num_labels", "multilabel", "labels", "loss_fn"), [
    (3, False, torch.tensor([0, 2, 1]), lambda z, y: torch.nn.functional.cross_entropy(z, y)),
    (1, False, torch.tensor([0.5, -1.0, 2.0]), lambda z, y: torch.nn.functional.mse_loss(z.view(-1), y)),
    (3, True, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]),
     lambda z, y: torch.nn.functional.binary_cross_entropy_with_logits(z, y)),
])
def test_losses(num_labels, multilabel, labels, loss_fn):
    model = tiny_model("vit")
    model.add_image_classification_head("h", num_labels=num_labels, multilabel=multilabel)
    with torch.no_grad():
        out = model(**tiny_inputs(arch="vit"), labels=labels)
    torch.testing.assert_close(out.loss, loss_fn(out.logits, labels), **TOL)


def test_training_an_adapter_with_the_head_lowers_its_loss():
    model = tiny_model("beit")
    model.add_adapter("a", config="lora[r=4, intermediate_lora=True]")
    model.add_image_classification_head("a", num_labels=3)
    model.train_adapter("a")
    inputs, labels = tiny_inputs(arch="beit"), torch.tensor([0, 2, 1])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(10):
        loss = model(**inputs, labels=labels).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < 0.5 * losses[0], losses
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"beit", "heads"} and all(
        ".a." in n or n.startswith("heads.a.") for n, p in model.named_parameters() if p.requires_grad
    )


def test_head_saved_with_the_adapter_loads_back(tmp_path):
    model = tiny_model("vit")
    model.add_adapter("a", config="seq_bn")
    model.add_image_classification_head("a", num_labels=3, id2label={0: "cat", 1: "dog", 2: "owl"}, use_pooler=True)
    with torch.no_grad():
        for p in model.heads["a"].parameters():
            p.normal_()
    model.set_active_adapters("a")
    model.save_adapter(tmp_path, "a")
    fresh = tiny_model("vit")
    fresh.load_adapter(tmp_path, set_active=True)
    assert fresh.heads["a"].config == model.heads["a"].config and fresh.config.id2label[2] == "owl"
    with torch.no_grad():
        torch.testing.assert_close(fresh(**tiny_inputs(arch="vit")).logits, model(**tiny_inputs(arch="vit")).logits)


def test_pooler_needed_but_absent_is_a_clear_error():
    model = tiny_model("vit")
    model.vit.pooler = None  # as ViTForImageClassification builds its ViT
    model.add_image_classification_head("h", use_pooler=True)
    with pytest.raises(ValueError, match="pooler_output, but the 'vit' base model has no pooler"):
        model(**tiny_inputs(arch="vit"))


def test_full_model_with_head_round_trips(tmp_path):
    model = tiny_model("beit")
    model.add_image_classification_head("h", num_labels=4)
    model.save_pretrained(tmp_path)
    again = AutoAdapterModel.from_pretrained(tmp_path).eval()
    assert again.heads["h"].config == model.heads["h"].config
    with torch.no_grad():
        expected = model(**tiny_inputs(arch="beit")).logits
        torch.testing.assert_close(again(**tiny_inputs(arch="beit"), head="h").logits, expected)


@pytest.mark.parametrize(("arch", "class_name"), [("vit", "ViTForImageClassification"),
                                                  ("beit", "BeitForImageClassification")])
def test_static_image_classifier_becomes_a_flexible_head(arch, class_name, tmp_path):
    """A ``XxxForImageClassification`` checkpoint gives head ``default``; an adapter saved from such a model with
    its head loads into the adapter model as a flexible head; both give the static model's logits."""
    config = tiny_config(arch)
    config.num_labels = 3
    torch.manual_seed(0)
    static = getattr(transformers, class_name)(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in static.parameters():  # off the init (zero biases, BEiT's zero position bias)
            param.add_(torch.randn(param.shape, generator=g) * 0.05)
    static.save_pretrained(tmp_path / "checkpoint")
    inputs = tiny_inputs(arch=arch)

    model = AutoAdapterModel.from_pretrained(tmp_path / "checkpoint").eval()
    assert model.active_head == "default" and model.heads["default"].config["use_pooler"] == (arch == "beit")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, static(**inputs).logits, atol=1e-5, rtol=0)

    adapterkit.init(static)
    static.add_adapter("a", config="seq_bn")
    randomize(static, "a")
    static.set_active_adapters("a")
    static.save_adapter(tmp_path / "a", "a")
    model.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs, head="a").logits, static(**inputs).logits, atol=1e-5, rtol=0)
