"""Causal language modelling head whose output layer is tied to the input embeddings."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput, CausalLMOutputWithPast

from ..methods.bottleneck import Activation
from .base import PredictionHead


class CausalLMHead(PredictionHead):
    """Predict the next token at every position.

    Layout (AdapterHub's, so weight keys match): ``[Linear, activation?, LayerNorm?] * (layers - 1)``
    then ``Linear(embedding_size, vocab_size)``; the activation is left out when
    ``activation_function`` is None and the LayerNorm when ``layer_norm`` is False. When the model
    config's ``tie_word_embeddings`` is true (the default) the last Linear's weight is the input
    embedding matrix itself (the same ``Parameter``); its bias stays the head's own.

    Loss: cross-entropy over the vocabulary (labels of -100 ignored), with labels shifted one
    position left when ``shift_labels`` is true.

    Args:
        model: the model the head belongs to.
        head_name: the head's name.
        vocab_size: output vocabulary size (default: the model config's).
        embedding_size: width of the output embedding (default: the config's ``embedding_size``,
            else its hidden size).
        layers: number of Linear layers.
        activation_function: activation after each inner Linear (None: none).
        layer_norm: add a LayerNorm after each inner Linear.
        bias: bias on the output Linear.
        shift_labels: shift labels for next-token prediction.
        dropout_prob: accepted for AdapterHub config compatibility; LM heads use no dropout.

    Raises:
        ValueError: if the weights are to be tied and the input embedding matrix is not
            ``(vocab_size, embedding_size)``.
    """

    head_type = "causal_lm"

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        vocab_size: int | None = None,
        embedding_size: int | None = None,
        layers: int = 1,
        activation_function: str | None = None,
        layer_norm: bool = False,
        bias: bool = False,
        shift_labels: bool = True,
        dropout_prob: float | None = None,
    ):
        config = model.config
        text = config if hasattr(config, "vocab_size") else config.get_text_config()  # multimodal: Gemma-3
        super().__init__(
            model,
            head_name,
            {
                "vocab_size": vocab_size or text.vocab_size,
                "embedding_size": embedding_size
                or getattr(text, "embedding_size", None)
                or text.hidden_size,
                "layers": layers,
                "activation_function": activation_function,
                "layer_norm": layer_norm,
                "bias": bias,
                "shift_labels": shift_labels,
                "dropout_prob": dropout_prob,
            },
        )
        self.build_lm(model)

    def build_lm(self, model: nn.Module) -> None:
        """Append the transform layers and the output Linear, initialise them, and tie the output weight.

        Raises:
            ValueError: if tying is on and the input embeddings do not match the output Linear's shape.
        """
        cfg = self.config
        emb_size = cfg["embedding_size"]
        # AdapterHub's rule (GPT-2's ``layer_norm_epsilon`` is not read), so its trained heads give its numbers
        eps = getattr(self.model_config, "layer_norm_eps", 1e-12)
        for i in range(cfg["layers"] - 1):
            self.append(nn.Linear(self.hidden_size if i == 0 else emb_size, emb_size))
            if cfg["activation_function"]:
                self.append(Activation(cfg["activation_function"]))
            if cfg["layer_norm"]:
                self.append(nn.LayerNorm(emb_size, eps=eps))
        self.append(nn.Linear(emb_size, cfg["vocab_size"], bias=cfg["bias"]))
        self.apply(model._init_weights)
        ref = next(model.parameters())
        self.to(device=ref.device, dtype=ref.dtype)
        self.train(model.training)
        self._tied_weights_keys: dict[str, str] = {}
        if self.ties_input_embeddings():
            self._tie_to_input_embeddings(model)

    def ties_input_embeddings(self) -> bool:
        """Whether the output Linear's weight is the input embedding matrix (the config's ``tie_word_embeddings``)."""
        return bool(getattr(self.model_config, "tie_word_embeddings", True))

    def _tie_to_input_embeddings(self, model: nn.Module) -> None:
        embedding = model.get_input_embeddings().weight
        output = self.get_output_embeddings()
        if embedding.shape != output.weight.shape:
            raise ValueError(
                f"cannot tie head {self.name!r}: input embeddings are {tuple(embedding.shape)}, the output "
                f"layer needs {tuple(output.weight.shape)}"
            )
        output.weight = embedding
        target = f"{len(self) - 1}.weight"
        source = next((n for n, p in model.named_parameters() if p is embedding), None)
        # Declared like a transformers model's ``_tied_weights_keys`` (keys relative to this module), so
        # ``save_pretrained`` knows which of the two aliased tensors to drop from the checkpoint.
        self._tied_weights_keys = {target: source or ""}
        # ... and in the model's tie map, so ``from_pretrained`` ties the head back to the embeddings
        # instead of reporting the dropped key as missing.
        tied = getattr(model, "all_tied_weights_keys", None)
        if isinstance(tied, dict) and source is not None:
            tied[f"heads.{self.name}.{target}"] = source

    def get_output_embeddings(self) -> nn.Linear:
        """The output Linear (vocabulary projection)."""
        return self[len(self) - 1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for the base model's last hidden states."""
        return self.mlp(hidden)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the vocabulary (shifted when ``shift_labels``), ignoring -100 labels."""
        labels = labels.to(logits.device)
        if self.config["shift_labels"]:
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100
        )

    def _output(self, loss: torch.Tensor | None, logits: torch.Tensor, outputs: Any) -> Any:
        past = outputs.get("past_key_values")
        if past is not None:
            return CausalLMOutputWithPast(
                loss=loss,
                logits=logits,
                past_key_values=past,
                hidden_states=outputs.get("hidden_states"),
                attentions=outputs.get("attentions"),
            )
        return CausalLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
        )

    def forward(
        self,
        outputs: Any,
        cls_output: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Logits ``(batch, seq, vocab_size)`` (and loss with ``labels``) as a `CausalLMOutput`
        (`CausalLMOutputWithPast` when the base model returned a cache)."""
        logits = self.logits(outputs[0])
        loss = self.loss(logits, labels) if labels is not None else None
        out = self._output(loss, logits, outputs)
        return out if return_dict else out.to_tuple()
