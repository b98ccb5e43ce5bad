"""AdapterFusion layers (Pfeiffer et al., 2021) on the bottleneck adapter sites.

At a site whose last fused adapter gives the query ``q`` (its input, or the sub-block output with
``query_before_ln``) and residual ``res``, and whose fused adapters give up-projection outputs
``u_1..u_N`` (before dropout, gate and residual), the layer computes, per token:

    u_i    <- u_i + res                            only with residual_before (keys and values)
    s_i     = (Q q) . (K u_i)                      Q, K: Linear(h, h), or the identity when switched off
    p       = softmax(dropout(s) / T)              T = 1, or 50 falling by 0.05 per training forward to 1
    out     = sum_i p_i V u_i                      value_before_softmax (V: Linear(h, h, bias=False))
            = V (sum_i p_i u_i)                    otherwise
    out    <- out + res                            unless residual_before

which is AdapterHub's ``BertFusion``. The layers live in an ``adapter_fusion_layer`` ModuleDict on
the bottleneck host (AdapterHub's state-dict keys, e.g.
``bert.encoder.layer.0.output.adapter_fusion_layer.a,b,c.query.weight``), only at sites where every
fused adapter has a module; at other sites a Fuse block does nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from ..configs import AdapterFusionConfig
from ..integration.target import ModelTarget
from .base import LayerModules
from .bottleneck import FUSION_ATTRIBUTE, bottleneck_sites

REGULARIZATION_WEIGHT = 0.01
TEMPERATURE_START = 50.0
# model config attributes holding the attention dropout, by naming convention (AdapterHub maps them the same way)
_ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout")


class AdapterFusionLayer(nn.Module):
    """One AdapterFusion layer at one site: attention of a query over the fused adapters' outputs.

    Parameter names are AdapterHub's (``query``, ``key``, ``value``; ``dense`` when none of the three
    is enabled — AdapterHub creates that unused layer too, so its checkpoints load).

    Args:
        config: the fusion's config.
        hidden_size: the model's hidden size.
        dropout_prob: dropout on the attention scores.
        adapter_names: the fused adapters (the last adapter of each Fuse child).

    Attributes:
        T: the current softmax temperature (1.0 unless ``config.temperature``); it is not saved.
    """

    def __init__(
        self, config: AdapterFusionConfig, hidden_size: int, dropout_prob: float, adapter_names: Sequence[str]
    ):
        super().__init__()
        self.config = config
        self.adapter_names: tuple[str, ...] = tuple(adapter_names)
        self.dropout = nn.Dropout(dropout_prob)
        if not (config.query or config.key or config.value):
            self.dense = nn.Linear(hidden_size, 1)
        if config.query:
            self.query = _bert_init(nn.Linear(hidden_size, hidden_size))
        if config.key:
            self.key = _bert_init(nn.Linear(hidden_size, hidden_size))
        if config.value:
            self.value = _bert_init(nn.Linear(hidden_size, hidden_size, bias=False))
            if config.value_initialized:
                with torch.no_grad():
                    self.value.weight.fill_(1e-6).fill_diagonal_(1.0)
        self.T = TEMPERATURE_START if config.temperature else 1.0
        self.reduction = self.T / 1000.0

    def forward(
        self, query: torch.Tensor, ups: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse the adapter outputs.

        Args:
            query: ``[batch, tokens, hidden]``.
            ups: the fused adapters' up-projection outputs, ``[batch, tokens, n_adapters, hidden]``.
            residual: ``[batch, tokens, hidden]``.

        Returns:
            (the fused hidden state ``[batch, tokens, hidden]``, the attention probabilities
            ``[batch, tokens, n_adapters]``).

        In training mode a temperature schedule advances by one step per call (AdapterHub also
        advances it in evaluation, so there the output depends on how often the model ran).
        """
        cfg = self.config
        if cfg.residual_before:
            # AdapterHub adds in place to the one tensor it passes as both keys and values
            ups = ups + residual.unsqueeze(2)
        q = self.query(query) if cfg.query else query
        k = self.key(ups) if cfg.key else ups
        v = self.value(ups) if cfg.value and cfg.value_before_softmax else ups
        scores = torch.matmul(q.unsqueeze(2), k.transpose(-2, -1)).squeeze(2)
        scores = self.dropout(scores)
        probs = torch.softmax(scores / self.T, dim=-1)
        if self.training and cfg.temperature:
            self.T = max(self.T - self.reduction, 1.0)
        out = torch.matmul(probs.unsqueeze(2), v).squeeze(2)
        if cfg.value and not cfg.value_before_softmax:
            out = self.value(out)
        if not cfg.residual_before:
            out = out + residual
        return out, probs

    def regularization_loss(self) -> torch.Tensor | None:
        """``0.01 * ||I - W_value||^2`` when this layer regularizes a trainable value matrix, else None."""
        if not (self.config.regularization and self.config.value and self.value.weight.requires_grad):
            return None
        weight = self.value.weight
        identity = torch.eye(weight.shape[0], device=weight.device, dtype=weight.dtype)
        return REGULARIZATION_WEIGHT * (identity - weight).pow(2).sum()


def _bert_init(linear: nn.Linear) -> nn.Linear:
    with torch.no_grad():
        linear.weight.normal_(0.0, 0.02)
        if linear.bias is not None:
            linear.bias.zero_()
    return linear


def attention_dropout_of(model_config: object) -> float:
    """The model's attention dropout probability (0.0 if its config names none)."""
    for key in _ATTENTION_DROPOUT_KEYS:
        value = getattr(model_config, key, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.0


def fusion_sites(target: ModelTarget, adapter_names: Sequence[str]) -> list[tuple[int, str, nn.Module]]:
    """(layer index, location key, host) of the bottleneck sites where all of ``adapter_names`` have a module."""
    return [
        (idx, location, host)
        for idx, location, host in bottleneck_sites(target)
        if all(a in host.adapters for a in adapter_names)
    ]


def add_fusion_layers(
    target: ModelTarget, name: str, adapter_names: Sequence[str], config: AdapterFusionConfig
) -> LayerModules:
    """Add fusion ``name`` at every bottleneck site where all of ``adapter_names`` have a module.

    Args:
        target: the model's attach points.
        name: the fusion's name (key in each site's ``adapter_fusion_layer``).
        adapter_names: the fused adapters.
        config: the fusion's config; ``dropout_prob=None`` uses the model's attention dropout.

    Returns:
        ``{layer_idx: {location_key: layer}}`` of the layers created (empty if no site has all adapters).
    """
    dropout = config.dropout_prob if config.dropout_prob is not None else attention_dropout_of(target.config)
    created: LayerModules = {}
    for idx, location, host in fusion_sites(target, adapter_names):
        if not hasattr(host, FUSION_ATTRIBUTE):
            host.add_module(FUSION_ATTRIBUTE, nn.ModuleDict())
        ref = next(host.adapters[adapter_names[-1]].parameters())
        layer = AdapterFusionLayer(config, target.hidden_size_of(idx), dropout, adapter_names).to(ref.device, ref.dtype)
        layer.train(target.layers[idx].training)
        getattr(host, FUSION_ATTRIBUTE)[name] = layer
        created.setdefault(idx, {})[location] = layer
    return created


def delete_fusion_layers(target: ModelTarget, name: str) -> None:
    """Remove every layer of fusion ``name`` (an unknown name does nothing)."""
    for _, _, host in bottleneck_sites(target):
        layers = getattr(host, FUSION_ATTRIBUTE, None)
        if layers is not None and name in layers:
            del layers[name]


def fusion_layers(target: ModelTarget, name: str) -> LayerModules:
    """``{layer_idx: {location_key: layer}}`` of fusion ``name`` (empty if it has none)."""
    found: LayerModules = {}
    for idx, location, host in bottleneck_sites(target):
        layers = getattr(host, FUSION_ATTRIBUTE, None)
        if layers is not None and name in layers:
            found.setdefault(idx, {})[location] = layers[name]
    return found


def iter_fusion_layers(module: nn.Module) -> Iterator[AdapterFusionLayer]:
    """Every `AdapterFusionLayer` below ``module`` (works on wrapped models too)."""
    for sub in module.modules():
        if isinstance(sub, AdapterFusionLayer):
            yield sub


def fusion_regularization_loss(layers: Iterable[AdapterFusionLayer]) -> torch.Tensor | None:
    """``sum over layers of 0.01 * ||I - W_value||^2`` over the layers whose config has ``regularization``
    and whose value matrix is trainable; None if there is no such layer (AdapterHub's rule, except that
    AdapterHub ignores the ``regularization`` flag)."""
    total: torch.Tensor | None = None
    for layer in layers:
        loss = layer.regularization_loss()
        if loss is not None:
            total = loss if total is None else total + loss
    return total


def fusion_value_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The value matrices of every fusion layer below ``module`` (kept out of weight decay in training)."""
    return [layer.value.weight for layer in iter_fusion_layers(module) if layer.config.value]
