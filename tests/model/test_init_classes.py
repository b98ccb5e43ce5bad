"""`adapterkit.init` on every transformers class of every supported architecture (the base model and each
class with a head that transformers' Auto mappings list for the model type): adapters attach, change the
output when active, and leave it unchanged when deactivated."""

from __future__ import annotations

import inspect

import pytest
import torch
import transformers
from transformers.models.auto import modeling_auto

import adapterkit
from tiny import ALL_ARCHS, randomize, tiny_config, tiny_inputs


def _mappings() -> list[dict[str, str]]:
    return [
        value
        for name, value in vars(modeling_auto).items()
        if name.startswith("MODEL") and name.endswith("_MAPPING_NAMES") and isinstance(value, dict)
    ]


def classes_of(arch: str) -> list[str]:
    """Names of the transformers classes of ``arch``'s model type in any Auto mapping (sorted)."""
    model_type = tiny_config(arch).model_type
    # the model type's own classes (a few mappings list other families' classes, e.g. decision models)
    # (a composite model type, "encoder-decoder", has no base class: every class listed for it)
    prefix = modeling_auto.MODEL_MAPPING_NAMES.get(model_type, "").removesuffix("Model")
    names: set[str] = set()
    for mapping in _mappings():
        value = mapping.get(model_type)
        for name in (value,) if isinstance(value, str) else value or ():
            if name.startswith(prefix) and hasattr(transformers, name):
                names.add(name)
    return sorted(names)


CASES = [pytest.param(arch, name, id=f"{arch}-{name}") for arch in ALL_ARCHS for name in classes_of(arch)]


def _inputs(arch: str, name: str) -> dict[str, torch.Tensor]:
    inputs = tiny_inputs(arch=arch)
    if name.endswith("ForCausalLM") and "decoder_input_ids" in inputs:  # an encoder-decoder's decoder on its own
        inputs = {k.removeprefix("decoder_"): v for k, v in inputs.items() if k.startswith("decoder_")}
    if "MultipleChoice" in name:  # (batch, choices, tokens)
        inputs = {k: v.unsqueeze(1).expand(-1, 2, *v.shape[1:]).contiguous() for k, v in inputs.items()}
    # only what the class's forward names (CLIPForImageClassification, of model type "clip", takes images alone)
    named = inspect.signature(getattr(transformers, name).forward).parameters
    inputs = {k: v for k, v in inputs.items() if k in named}
    return inputs


def _tensors(output) -> list[torch.Tensor]:
    """The floating-point tensors of an output, also inside tuples (a backbone's ``feature_maps``)."""
    values = [v for value in output.values() for v in (value if isinstance(value, tuple) else (value,))]
    return [v for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()]


@pytest.mark.parametrize(("arch", "name"), CASES)
def test_init_on_every_class(arch, name):
    torch.manual_seed(0)
    model = getattr(transformers, name)(tiny_config(arch)).eval()
    adapterkit.init(model)
    inputs = _inputs(arch, name)
    with torch.no_grad():
        base = _tensors(model(**inputs))
        model.add_adapter("a", config="seq_bn")
        model.add_adapter("l", config="lora")
        randomize(model, "a")
        randomize(model, "l")
        model.set_active_adapters(adapterkit.Stack("a", "l"))
        adapted = _tensors(model(**inputs))
        model.set_active_adapters(None)
        again = _tensors(model(**inputs))
    assert base, f"{name} returned no floating-point outputs"
    assert any(not torch.allclose(x, y, atol=1e-5) for x, y in zip(adapted, base, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(again, base, strict=True))
