"""Sequence-to-sequence language modelling head: vocabulary logits from the decoder output of an encoder-decoder
model, and the decoder inputs derived from target labels as transformers' ``XxxForConditionalGeneration`` does.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import Seq2SeqLMOutput

from .causal_lm import CausalLMHead


class Seq2SeqLMHead(CausalLMHead):
    """Predict the next target token at every decoder position (AdapterHub's ``Seq2SeqLMHead``).

    Layout: ``[Linear, activation?, LayerNorm?] * (layers - 1)`` then ``Linear(hidden, vocab_size)``, weight keys
    ``heads.<name>.<i>.*``; the output Linear is tied to the input embeddings when the model config says so
    (``tie_word_embeddings``: BART, T5; not mT5, T5 v1.1 or Flan-T5). It reads ``outputs[0]``, which is the decoder
    output for every encoder-decoder base model (``Seq2SeqModelOutput.last_hidden_state``). Where the table entry
    says so (`ArchitectureSpec.scale_tied_lm_output`, T5) and the embeddings are tied, the decoder output is
    scaled by ``hidden_size ** -0.5`` first, as ``T5ForConditionalGeneration`` does.

    Loss: cross-entropy between the logits at each decoder position and ``labels`` at the same position (no
    shift: the decoder inputs are the labels shifted right, see `decoder_input_ids_from_labels`), -100 ignored.

    Args:
        model: the model the head belongs to.
        head_name: the head's name.
        vocab_size: output vocabulary size (default: the model config's).
        layers: number of Linear layers.
        activation_function: activation after each inner Linear (None: none).
        layer_norm: a LayerNorm after each inner Linear.
        bias: bias on the output Linear.
        shift_labels: shift labels one position left for the loss (off for sequence-to-sequence training).

    Raises:
        ValueError: if tying is on and the input embedding matrix does not fit the output Linear.
    """

    head_type = "seq2seq_lm"

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        vocab_size: int | None = None,
        layers: int = 1,
        activation_function: str | None = None,
        layer_norm: bool = False,
        bias: bool = False,
        shift_labels: bool = False,
    ):
        object.__setattr__(self, "_spec", model._adapter_target.spec)  # read while the parent class builds
        super().__init__(
            model,
            head_name,
            vocab_size=vocab_size,
            layers=layers,
            activation_function=activation_function,
            layer_norm=layer_norm,
            bias=bias,
            shift_labels=shift_labels,
        )
        # AdapterHub's seq2seq_lm config has neither key (its loader would reject them)
        del self.config["embedding_size"], self.config["dropout_prob"]
        scale = model._adapter_target.spec.scale_tied_lm_output and self.ties_input_embeddings()
        self.output_scale = self.hidden_size**-0.5 if scale else None

    def ties_input_embeddings(self) -> bool:
        """Whether the output Linear is the input embedding matrix: the config attribute the table entry names
        (`ArchitectureSpec.lm_tie_attr`: ``tie_word_embeddings``; T5's saved value, ``scale_decoder_outputs``;
        never for mT5)."""
        attribute = self._spec.lm_tie_attr
        return attribute is not None and bool(getattr(self.model_config, attribute, True))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for the decoder's last hidden states (scaled first where the model does)."""
        if self.output_scale is not None:
            hidden = hidden * self.output_scale
        return self.mlp(hidden)

    def _output(self, loss: torch.Tensor | None, logits: torch.Tensor, outputs: Any) -> Seq2SeqLMOutput:
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=outputs.get("past_key_values"),
            decoder_hidden_states=outputs.get("decoder_hidden_states"),
            decoder_attentions=outputs.get("decoder_attentions"),
            cross_attentions=outputs.get("cross_attentions"),
            encoder_last_hidden_state=outputs.get("encoder_last_hidden_state"),
            encoder_hidden_states=outputs.get("encoder_hidden_states"),
            encoder_attentions=outputs.get("encoder_attentions"),
        )


def decoder_input_ids_from_labels(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """The decoder inputs for target ``labels`` (or any token ids): shifted one position right as the model's
    own transformers code does it, -100 replaced by the pad token.

    The model's ``_shift_right`` (T5, mT5) is used if it has one, else the ``shift_tokens_right`` function of
    its base model's modeling module (BART: start with ``decoder_start_token_id``; mBART and PLBart: start with
    each row's last non-pad token, its language id), else the plain rule with ``decoder_start_token_id``.

    Raises:
        ValueError: if the config has no pad token or, for the plain rule, no decoder start token.
    """
    config = model.config
    shift = getattr(model, "_shift_right", None)
    if callable(shift):
        return shift(labels)
    base = getattr(model, "base_model", model)
    function = getattr(sys.modules.get(type(base).__module__), "shift_tokens_right", None)
    values = {"pad_token_id": config.pad_token_id, "decoder_start_token_id": config.decoder_start_token_id}
    if config.pad_token_id is None:
        raise ValueError(
            f"{type(config).__name__}.pad_token_id is None; it is needed to shift labels into decoder inputs"
        )
    if callable(function):
        parameters = list(inspect.signature(function).parameters)
        return function(labels, **{k: values[k] for k in parameters[1:] if k in values})
    if config.decoder_start_token_id is None:
        raise ValueError(
            f"{type(config).__name__}.decoder_start_token_id is None; set it to shift labels into decoder inputs"
        )
    shifted = labels.new_full(labels.shape, config.decoder_start_token_id)
    shifted[..., 1:] = labels[..., :-1]
    return shifted.masked_fill(shifted == -100, config.pad_token_id)
