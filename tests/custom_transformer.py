"""A small custom PyTorch transformer that no architecture table knows, for `adapterkit.init(model, interface=...)`.

Shared by tests/integration/test_interface.py and the AdapterHub golden generator
tests/fixtures/golden/make_golden_interface.py, so it runs on transformers 4.57 (AdapterHub 1.3.0) and 5.x alike.

- `CustomConfig`: sizes, ``norm_style`` (``"pre"``: ``x + f(LN(x))``; ``"post"``: ``LN(x + f(x))``) and
  ``route_attention`` (True: attention goes through transformers' ``ALL_ATTENTION_FUNCTIONS`` like transformers'
  own models; False: computed inline, so nothing outside the module can reach keys and values).
- `CustomModel` (embeddings, ``layers``, q/k/v/o attention, fc1/fc2 feed-forward) and
  `CustomForSequenceClassification` (``transformer`` + ``classifier``).
- `CustomSeq2SeqModel`: an encoder stack and a decoder stack of another width whose layers add cross-attention
  to the encoder output (two layer stacks in one model).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


class CustomConfig(PretrainedConfig):
    """Config of the custom models (``model_type`` ``"custom_transformer"``, unknown to transformers)."""

    model_type = "custom_transformer"

    def __init__(
        self,
        vocab_size: int = 99,
        hidden_size: int = 32,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        intermediate_size: int = 37,
        max_position_embeddings: int = 64,
        norm_style: str = "pre",
        route_attention: bool = True,
        decoder_hidden_size: int = 24,
        decoder_layers: int = 2,
        initializer_range: float = 0.2,
        num_labels: int = 3,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.norm_style = norm_style
        self.route_attention = route_attention
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_layers = decoder_layers
        self.initializer_range = initializer_range
        super().__init__(num_labels=num_labels, **kwargs)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain attention over ``(batch, heads, tokens, head_dim)`` tensors with an additive float mask; returns
    ``(batch, tokens, heads, head_dim)`` and the probabilities (transformers' eager convention)."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _attention_function(name):
    """transformers' attention function ``name`` (5.x: ``get_interface``; 4.57: a plain lookup), eager by default."""
    if hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):
        return ALL_ATTENTION_FUNCTIONS.get_interface(name, eager_attention_forward)
    return eager_attention_forward if name == "eager" else ALL_ATTENTION_FUNCTIONS[name]


class CustomAttention(nn.Module):
    """Multi-head attention with separate q/k/v/o projections; ``kv_size`` is the width of the key/value input
    (another stack's width for cross-attention)."""

    def __init__(self, config: CustomConfig, hidden_size: int, kv_size: int | None = None):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(kv_size or hidden_size, hidden_size)
        self.v_proj = nn.Linear(kv_size or hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states, attention_mask=None, key_value_states=None):
        batch, length, _ = hidden_states.shape
        source = hidden_states if key_value_states is None else key_value_states

        def heads(x):
            return x.view(batch, x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        query, key, value = heads(self.q_proj(hidden_states)), heads(self.k_proj(source)), heads(self.v_proj(source))
        if self.config.route_attention:
            attention = _attention_function(self.config._attn_implementation)
            out, _ = attention(self, query, key, value, attention_mask, scaling=self.scaling, dropout=0.0)
        else:  # inline: no attention function anyone could wrap
            scores = torch.matmul(query, key.transpose(-1, -2)) * self.scaling
            if attention_mask is not None:
                scores = scores + attention_mask
            out = torch.matmul(torch.softmax(scores, dim=-1), value).transpose(1, 2)
        return self.o_proj(out.reshape(batch, length, -1))


class CustomMLP(nn.Module):
    """``fc2(gelu(fc1(x)))``."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class CustomLayer(nn.Module):
    """One transformer layer, pre-LN or post-LN, with optional cross-attention (``cross_attn`` + ``ln_cross``)."""

    def __init__(self, config: CustomConfig, hidden_size: int, cross_size: int | None = None):
        super().__init__()
        self.pre_ln = config.norm_style == "pre"
        self.attn = CustomAttention(config, hidden_size)
        self.ln_1 = nn.LayerNorm(hidden_size)
        if cross_size is not None:
            self.cross_attn = CustomAttention(config, hidden_size, kv_size=cross_size)
            self.ln_cross = nn.LayerNorm(hidden_size)
        self.mlp = CustomMLP(hidden_size, config.intermediate_size)
        self.ln_2 = nn.LayerNorm(hidden_size)

    def _block(self, x, norm, run):
        if self.pre_ln:
            return x + run(norm(x))
        return norm(x + run(x))

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None):
        x = self._block(hidden_states, self.ln_1, lambda h: self.attn(h, attention_mask))
        if encoder_hidden_states is not None:
            cross = self.cross_attn
            x = self._block(x, self.ln_cross, lambda h: cross(h, encoder_attention_mask, encoder_hidden_states))
        return self._block(x, self.ln_2, self.mlp)


class CustomEmbeddings(nn.Module):
    """Token plus position embeddings."""

    def __init__(self, config: CustomConfig, hidden_size: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, hidden_size)

    def forward(self, input_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]


def additive_mask(attention_mask, dtype):
    """A ``(batch, 1, 1, tokens)`` additive mask from a 0/1 padding mask (None stays None)."""
    if attention_mask is None:
        return None
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class CustomPreTrainedModel(PreTrainedModel):
    """Weight init and the attention implementations the custom models support."""

    config_class = CustomConfig
    base_model_prefix = "transformer"
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class CustomStack(nn.Module):
    """Embeddings, layers and (pre-LN) a final norm; decoder stacks attend to an encoder output."""

    def __init__(self, config: CustomConfig, hidden_size: int, num_layers: int, cross_size: int | None = None):
        super().__init__()
        self.embeddings = CustomEmbeddings(config, hidden_size)
        self.layers = nn.ModuleList([CustomLayer(config, hidden_size, cross_size) for _ in range(num_layers)])
        self.final_norm = nn.LayerNorm(hidden_size) if config.norm_style == "pre" else nn.Identity()

    def forward(self, input_ids, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None):
        hidden = self.embeddings(input_ids)
        mask = additive_mask(attention_mask, hidden.dtype)
        cross_mask = additive_mask(encoder_attention_mask, hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, mask, encoder_hidden_states, cross_mask)
        return self.final_norm(hidden)


class CustomModel(CustomPreTrainedModel):
    """The encoder model: ``embeddings``, ``layers`` and ``final_norm`` at the top level."""

    def __init__(self, config: CustomConfig):
        super().__init__(config)
        stack = CustomStack(config, config.hidden_size, config.num_hidden_layers)
        self.embeddings, self.layers, self.final_norm = stack.embeddings, stack.layers, stack.final_norm
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return BaseModelOutput(last_hidden_state=CustomStack.forward(self, input_ids, attention_mask))


class CustomForSequenceClassification(CustomPreTrainedModel):
    """`CustomModel` under ``transformer`` plus a linear ``classifier`` on the first token."""

    def __init__(self, config: CustomConfig):
        super().__init__(config)
        self.transformer = CustomModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.transformer(input_ids, attention_mask=attention_mask).last_hidden_state
        return SequenceClassifierOutput(logits=self.classifier(hidden[:, 0]))


class CustomSeq2SeqModel(CustomPreTrainedModel):
    """Two layer stacks: ``encoder`` (``hidden_size``) and ``decoder`` (``decoder_hidden_size``, with
    cross-attention to the encoder output). Returns the decoder's last hidden state."""

    base_model_prefix = "model"

    def __init__(self, config: CustomConfig):
        super().__init__(config)
        self.encoder = CustomStack(config, config.hidden_size, config.num_hidden_layers)
        self.decoder = CustomStack(
            config, config.decoder_hidden_size, config.decoder_layers, cross_size=config.hidden_size
        )
        self.post_init()

    def get_input_embeddings(self):
        return self.encoder.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.encoder.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, **kwargs):
        encoded = self.encoder(input_ids, attention_mask)
        decoded = self.decoder(decoder_input_ids, None, encoded, attention_mask)
        return BaseModelOutput(last_hidden_state=decoded)
