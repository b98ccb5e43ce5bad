"""The new head types are registered and rebuild from their saved config."""

import pytest

from adapterkit.heads import HEAD_TYPES


@pytest.mark.parametrize(
    "add, kwargs",
    [
        ("add_tagging_head", {"num_labels": 3}),
        ("add_qa_head", {}),
        ("add_multiple_choice_head", {"num_choices": 4}),
        ("add_masked_lm_head", {}),
        ("add_causal_lm_head", {}),
    ],
)
def test_head_rebuilds_from_its_config(bert, add, kwargs):
    getattr(bert, add)("a", **kwargs)
    config = bert.config.prediction_heads["a"]
    assert HEAD_TYPES[config["head_type"]] is type(bert.heads["a"])
    bert.add_prediction_head_from_config("b", config)
    assert bert.heads["b"].config == config
    assert {k: v.shape for k, v in bert.heads["b"].state_dict().items()} == {
        k: v.shape for k, v in bert.heads["a"].state_dict().items()
    }
