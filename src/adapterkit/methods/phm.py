"""Parameterized hypercomplex multiplication (PHM) layers, the projections of Compacter
(Mahabadi et al., 2021, https://arxiv.org/abs/2106.04647).

A PHM layer maps ``x`` (``..., in``) to

    y = x @ H + b,        H = sum_i kron(S_i, W_i)        (in x out; no transpose, unlike nn.Linear)

with ``n = phm_dim`` rule matrices ``S_i`` (``n x n``) and weight blocks ``W_i`` (``in/n x out/n``), so
``kron(S, W)[p * in/n + q, s * out/n + t] = S[p, s] * W[q, t]``. Options (all `BnConfig` keys):

* ``factorized_phm_W``: ``W_i = W_left_i @ W_right_i`` with shapes ``(in/n, phm_rank)``, ``(phm_rank, out/n)``;
* ``factorized_phm_rule``: ``S_i = S_left_i @ S_right_i`` with shapes ``(n, 1)``, ``(1, n)``;
* ``shared_phm_rule`` / ``shared_W_phm``: the rule / the weights are one set per adapter, used by every
  PHM layer of every layer and location (`SharedPHMParameters`, kept at the base model's
  ``shared_parameters.<adapter>``, AdapterHub's key names);
* ``learn_phm=False``: the rule is a constant (a buffer: saved and loaded, never trained);
* ``phm_bias``: the bias ``b`` (zeros at init).

Initialisation: ``hypercomplex_nonlinearity`` picks the distribution of each ``W`` block
(``"glorot-uniform"``, ``"glorot-normal"``, ``"normal"`` with std ``phm_init_range``; ``"phm"`` is glorot-normal),
``phm_c_init`` that of the rule (``"normal"`` with std ``phm_init_range``, ``"uniform"`` in ±0.01).
"""

from __future__ import annotations

import torch
from torch import nn

from ..configs import BnConfig

_POSITIONS = ("down", "up")


def _init_blocks(tensor: torch.Tensor, config: BnConfig, generator: torch.Generator | None) -> None:
    """Initialise each ``tensor[i]`` block of a PHM weight in place."""
    kind = config.hypercomplex_nonlinearity
    for block in tensor:
        if kind == "glorot-uniform":
            nn.init.xavier_uniform_(block, generator=generator)
        elif kind in ("glorot-normal", "phm"):
            nn.init.xavier_normal_(block, generator=generator)
        else:  # normal
            nn.init.normal_(block, 0.0, config.phm_init_range, generator=generator)


def _add_weight(
    module: nn.Module,
    prefix: str,
    in_features: int,
    out_features: int,
    config: BnConfig,
    generator: torch.Generator | None,
) -> None:
    """Register the PHM weight ``prefix`` (``prefix_left``/``prefix_right`` when factorized) on ``module``."""
    n, rank = config.phm_dim, config.phm_rank
    if config.factorized_phm_W:
        shapes = {f"{prefix}_left": (n, in_features // n, rank), f"{prefix}_right": (n, rank, out_features // n)}
    else:
        shapes = {prefix: (n, in_features // n, out_features // n)}
    for key, shape in shapes.items():
        tensor = torch.empty(shape)
        with torch.no_grad():
            _init_blocks(tensor, config, generator)
        module.register_parameter(key, nn.Parameter(tensor))


def _add_rule(module: nn.Module, config: BnConfig, generator: torch.Generator | None) -> None:
    """Register the PHM rule (``phm_rule``, or ``phm_rule_left``/``phm_rule_right``) on ``module``."""
    n = config.phm_dim
    shapes = (
        {"phm_rule_left": (n, n, 1), "phm_rule_right": (n, 1, n)}
        if config.factorized_phm_rule
        else {"phm_rule": (n, n, n)}
    )
    for key, shape in shapes.items():
        tensor = torch.empty(shape)
        with torch.no_grad():
            if config.phm_c_init == "uniform":
                tensor.uniform_(-0.01, 0.01, generator=generator)
            else:
                tensor.normal_(0.0, config.phm_init_range, generator=generator)
        if config.learn_phm:
            module.register_parameter(key, nn.Parameter(tensor))
        else:
            module.register_buffer(key, tensor)


def _rule(source: nn.Module, factorized: bool) -> torch.Tensor:
    if factorized:
        return torch.bmm(source.phm_rule_left, source.phm_rule_right)
    return source.phm_rule


def _weight(source: nn.Module, prefix: str, factorized: bool) -> torch.Tensor:
    if factorized:
        return torch.bmm(getattr(source, f"{prefix}_left"), getattr(source, f"{prefix}_right"))
    return getattr(source, prefix)


def check_phm_sizes(config: BnConfig, in_features: int, out_features: int) -> None:
    """Raise ``ValueError`` unless both sizes of a PHM layer are multiples of ``phm_dim``.

    Raises:
        ValueError: naming the sizes, ``phm_dim`` and how to fix it.
    """
    for what, size in (("input", in_features), ("output", out_features)):
        if size % config.phm_dim:
            raise ValueError(
                f"BnConfig.phm_dim={config.phm_dim} does not divide the PHM layer {what} size {size} "
                f"({in_features} -> {out_features}); choose a phm_dim that divides both the hidden size and "
                "the bottleneck size (hidden size // reduction_factor)"
            )


class SharedPHMParameters(nn.Module):
    """The PHM parameters one adapter shares across all its PHM layers.

    Holds ``phm_rule`` (or ``phm_rule_left``/``phm_rule_right``) when ``shared_phm_rule``, and
    ``W_down_left``/``W_down_right``/``W_up_left``/``W_up_right`` (or ``W_down``/``W_up``) when
    ``shared_W_phm``; registered at ``<base model>.shared_parameters.<adapter>`` by the bottleneck method.

    Args:
        hidden_size: the model's hidden size (input of the down projection).
        bottleneck_size: the adapter's bottleneck size (output of the down projection).
        config: the adapter's config.
        generator: random source for initialisation.

    Raises:
        ValueError: if ``phm_dim`` does not divide the sizes of shared weights.
    """

    def __init__(
        self, hidden_size: int, bottleneck_size: int, config: BnConfig, generator: torch.Generator | None = None
    ):
        super().__init__()
        if config.shared_W_phm:
            check_phm_sizes(config, hidden_size, bottleneck_size)
            _add_weight(self, "W_down", hidden_size, bottleneck_size, config, generator)
            _add_weight(self, "W_up", bottleneck_size, hidden_size, config, generator)
        if config.shared_phm_rule:
            _add_rule(self, config, generator)


class PHMLayer(nn.Module):
    """``y = x @ sum_i kron(S_i, W_i) + b``: a parameter-efficient replacement for ``nn.Linear``.

    Parameter names are AdapterHub's (``W_left``, ``W_right`` or ``W``; ``phm_rule`` or
    ``phm_rule_left``/``phm_rule_right``; ``b``), so its checkpoints load unchanged.

    Args:
        in_features: input size (a multiple of ``phm_dim``).
        out_features: output size (a multiple of ``phm_dim``).
        position: ``"down"`` or ``"up"``: which of the shared weights this layer uses.
        config: the adapter's config (``phm_*`` keys).
        shared: the adapter's `SharedPHMParameters`, required when ``shared_phm_rule`` or ``shared_W_phm``.
        generator: random source for initialisation.

    Raises:
        ValueError: for sizes ``phm_dim`` does not divide, an unknown position, or missing shared parameters.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        position: str,
        config: BnConfig,
        shared: SharedPHMParameters | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if position not in _POSITIONS:
            raise ValueError(f"PHMLayer position={position!r} is not allowed; choose one of {list(_POSITIONS)}")
        check_phm_sizes(config, in_features, out_features)
        if (config.shared_phm_rule or config.shared_W_phm) and shared is None:
            raise ValueError(
                "PHMLayer needs the adapter's SharedPHMParameters when shared_phm_rule or shared_W_phm is set"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.position = position
        self.phm_dim = config.phm_dim
        self.shared_W = bool(config.shared_W_phm)
        self.shared_rule = bool(config.shared_phm_rule)
        self.factorized_W = bool(config.factorized_phm_W)
        self.factorized_rule = bool(config.factorized_phm_rule)
        # a plain reference, not a submodule: the shared tensors have one state-dict name, under the base model
        object.__setattr__(self, "shared", shared)
        if not self.shared_W:
            _add_weight(self, "W", in_features, out_features, config, generator)
        if not self.shared_rule:
            _add_rule(self, config, generator)
        if config.phm_bias:
            self.b = nn.Parameter(torch.zeros(out_features))
        else:
            self.register_parameter("b", None)

    def kernel(self) -> torch.Tensor:
        """``H = sum_i kron(S_i, W_i)``, the ``(in, out)`` matrix this layer multiplies by."""
        rule = _rule(self.shared if self.shared_rule else self, self.factorized_rule)  # (n, n, n)
        if self.shared_W:
            weight = _weight(self.shared, f"W_{self.position}", self.factorized_W)  # type: ignore[arg-type]
        else:
            weight = _weight(self, "W", self.factorized_W)  # (n, in/n, out/n)
        n, rows, cols = weight.shape
        # H[p*rows + q, s*cols + t] = sum_i S_i[p, s] W_i[q, t]
        return torch.einsum("ips,iqt->pqst", rule.to(weight.dtype), weight).reshape(n * rows, n * cols)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.kernel().to(x.dtype)
        return y if self.b is None else y + self.b

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, phm_dim={self.phm_dim}, "
            f"position={self.position!r}, shared_W={self.shared_W}, shared_rule={self.shared_rule}"
        )
