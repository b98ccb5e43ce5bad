"""`ModelInterface`: AdapterHub's plugin interface (``AdapterModelInterface``) for models the table does not know.

A user describes a custom model by attribute paths, with AdapterHub's field names; `interface_spec` turns one
interface (or several, one per layer stack) into an `ArchitectureSpec`, so custom models run through the same
table-driven code as every built-in architecture. The mapping (see docs/custom_models.md):

- ``layer_self_attn.attn_o_proj``: the self-attention sub-block output (bottleneck ``mh_adapter``), residual
  stream from the first input of ``layer_pre_self_attn``, post-LN norm ``layer_ln_1``; adapters live in the layer's
  ``attention_adapters`` (AdapterHub's key names);
- ``layer_output_proj``: the feed-forward output (``output_adapter``), residual from ``layer_pre_ffn``, norm
  ``layer_ln_2``, adapters in ``output_adapters``;
- ``layer_cross_attn``: the cross-attention sub-block output (``cross_adapter``), residual from
  ``layer_pre_cross_attn``, adapters in ``cross_attention_adapters``;
- q/k/v (or fused qkv) projections below the self- and cross-attention: LoRA's ``selfattn_lora``, prefix tuning's
  attention module (their parent); ``layer_intermediate_proj`` / ``layer_output_proj``: ``intermediate_lora`` /
  ``output_lora``; ``model_embeddings``: invertible adapters and prompt tuning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .modules import get_submodule
from .spec import ArchitectureSpec, LayerStack, SubBlock

ADAPTER_METHODS = ("bottleneck", "lora", "prefix_tuning", "prompt_tuning", "reft", "invertible")
"""Method families an interface may list in ``adapter_methods`` (AdapterHub's `AdapterMethod` names)."""

ADAPTERHUB_FIELDS = (
    "adapter_methods",
    "model_embeddings",
    "model_layers",
    "layer_self_attn",
    "layer_cross_attn",
    "attn_o_proj",
    "layer_intermediate_proj",
    "layer_output_proj",
    "attn_k_proj",
    "attn_q_proj",
    "attn_v_proj",
    "attn_qkv_proj",
    "layer_pre_self_attn",
    "layer_pre_cross_attn",
    "layer_pre_ffn",
    "layer_ln_1",
    "layer_ln_2",
    "base_model",
)
"""The fields of AdapterHub's ``AdapterModelInterface``, always written to ``adapter_interface.json``."""

# fields that only choose what may be added, not where adapters sit or what they compute
_NON_PLACEMENT_FIELDS = ("adapter_methods", "attention_interface", "decoder_only", "name")
# fields shared by the whole model: equal in every interface of a list
_MODEL_FIELDS = ("adapter_methods", "model_embeddings", "base_model", "decoder_only")
_LAYER_FIELDS = (
    "layer_self_attn",
    "layer_cross_attn",
    "layer_intermediate_proj",
    "layer_output_proj",
    "layer_pre_self_attn",
    "layer_pre_cross_attn",
    "layer_pre_ffn",
    "layer_ln_1",
    "layer_ln_2",
)
_ATTENTION_FIELDS = ("attn_o_proj", "attn_q_proj", "attn_k_proj", "attn_v_proj", "attn_qkv_proj")


@dataclass(frozen=True)
class ModelInterface:
    """Where adapters attach in a custom model, with the fields of AdapterHub's ``AdapterModelInterface``.

    Paths are dotted attribute paths: ``model_embeddings``/``model_layers`` below the base model, ``layer_*``
    below one layer, ``attn_*`` below the self-attention (and the cross-attention) module.

    Args:
        adapter_methods: the method families that may be added: a subset of `ADAPTER_METHODS`
            (``"bottleneck"``, ``"lora"``, ``"prefix_tuning"``, ``"prompt_tuning"``, ``"reft"``, ``"invertible"``).
        model_embeddings: the token embedding module (invertible adapters and prompt tuning hook its output).
        model_layers: the ``nn.ModuleList`` of transformer layers.
        layer_self_attn: the self-attention module of a layer.
        layer_cross_attn: the cross-attention module of a layer, or None.
        attn_o_proj: the attention output projection; its output is where ``mh_adapter`` bottlenecks act
            (None: the model has no ``mh_adapter`` location, as in AdapterHub).
        layer_intermediate_proj: the first feed-forward projection (``intermediate_lora``).
        layer_output_proj: the last feed-forward projection (``output_lora``; ``output_adapter`` bottlenecks act on
            its output).
        attn_k_proj, attn_q_proj, attn_v_proj: the key, query and value projections (all three, or none).
        attn_qkv_proj: a fused query/key/value projection (instead of the three).
        layer_pre_self_attn, layer_pre_cross_attn, layer_pre_ffn: modules whose first input is the residual stream
            of the sub-block (pre-LN: its input norm; post-LN: the sub-block itself). None: the adapters do not see
            the residual stream (they act on the sub-block output alone, as AdapterHub does).
        layer_ln_1, layer_ln_2: post-LN models' norms applied to ``sub-block output + residual`` after the
            self-attention and after the feed-forward; None for pre-LN models.
        base_model: the attribute of the model holding the base model (default: the class's
            ``base_model_prefix``); set on the model as its ``base_model_prefix``, as AdapterHub does.
        attention_interface: (adapterkit) the self- and cross-attention compute attention through transformers'
            ``AttentionInterface`` (``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``, with transformers'
            ``eager_attention_forward`` convention); prefix tuning needs it.
        hidden_size_attr: (adapterkit) the model config's attribute holding this stack's hidden size.
        config_attr: (adapterkit) the model config's attribute holding this stack's sub-config, if any.
        decoder_only: (adapterkit) a causal decoder (prompt tuning is refused, sequence heads read the last token).
        name: (adapterkit) a label for this stack in messages (``"text"``, ``"vision"``, ``"decoder"``).

    Raises:
        ValueError: for an unknown method family, q/k/v projections given partly or together with a fused one,
            ``prefix_tuning`` without ``attention_interface``, a post-LN norm without its residual hook point,
            no self-attention, or a fused qkv projection with cross-attention.
    """

    adapter_methods: Sequence[str]
    model_embeddings: str | None
    model_layers: str
    layer_self_attn: str | None
    layer_cross_attn: str | None
    attn_o_proj: str | None
    layer_intermediate_proj: str
    layer_output_proj: str
    attn_k_proj: str | None = None
    attn_q_proj: str | None = None
    attn_v_proj: str | None = None
    attn_qkv_proj: str | None = None
    layer_pre_self_attn: str | None = None
    layer_pre_cross_attn: str | None = None
    layer_pre_ffn: str | None = None
    layer_ln_1: str | None = None
    layer_ln_2: str | None = None
    base_model: str | None = None
    attention_interface: bool = False
    hidden_size_attr: str = "hidden_size"
    config_attr: str | None = None
    decoder_only: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        methods = (self.adapter_methods,) if isinstance(self.adapter_methods, str) else tuple(self.adapter_methods)
        object.__setattr__(self, "adapter_methods", methods)
        unknown = [m for m in methods if m not in ADAPTER_METHODS]
        if unknown:
            raise ValueError(
                f"ModelInterface.adapter_methods has unknown methods {unknown}; allowed: {list(ADAPTER_METHODS)}"
            )
        separate = {"attn_q_proj": self.attn_q_proj, "attn_k_proj": self.attn_k_proj, "attn_v_proj": self.attn_v_proj}
        given = [k for k, v in separate.items() if v is not None]
        if given and self.attn_qkv_proj is not None:
            raise ValueError(
                f"ModelInterface: give either attn_q_proj, attn_k_proj and attn_v_proj or attn_qkv_proj, not both "
                f"(got {given} and attn_qkv_proj={self.attn_qkv_proj!r})"
            )
        if not given and self.attn_qkv_proj is None:
            raise ValueError("ModelInterface: give attn_q_proj, attn_k_proj and attn_v_proj, or attn_qkv_proj")
        if given and len(given) < 3:
            missing = sorted(set(separate) - set(given))
            raise ValueError(f"ModelInterface: {given} given without {missing}; give all three or attn_qkv_proj")
        if self.layer_self_attn is None:
            raise ValueError(
                "ModelInterface.layer_self_attn is None; adapterkit needs the self-attention module (the q/k/v paths "
                "are relative to it)"
            )
        if self.attn_qkv_proj is not None and self.layer_cross_attn is not None:
            raise ValueError(
                "ModelInterface: a fused attn_qkv_proj together with layer_cross_attn is not supported "
                "(cross-attention projections must be separate q/k/v); give attn_q_proj, attn_k_proj and attn_v_proj"
            )
        if "prefix_tuning" in methods and not self.attention_interface:
            raise ValueError(
                "ModelInterface.adapter_methods lists 'prefix_tuning', which adds keys and values inside transformers' "
                "AttentionInterface; set attention_interface=True if the model's attention calls "
                "ALL_ATTENTION_FUNCTIONS[config._attn_implementation], else remove 'prefix_tuning'"
            )
        for norm, residual in (("layer_ln_1", "layer_pre_self_attn"), ("layer_ln_2", "layer_pre_ffn")):
            if getattr(self, norm) is not None and getattr(self, residual) is None:
                raise ValueError(
                    f"ModelInterface.{norm}={getattr(self, norm)!r} (a post-LN norm) needs {residual}: the norm's "
                    "input is the sub-block output plus the residual stream, which bottleneck adapters must know"
                )

    # ---- serialization ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict: AdapterHub's fields always, adapterkit's only where not the default
        (so a file that uses only AdapterHub's fields stays readable by AdapterHub)."""
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ADAPTERHUB_FIELDS or value != f.default:
                data[f.name] = list(value) if f.name == "adapter_methods" else value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInterface:
        """An interface from `to_dict`'s form (or AdapterHub's ``adapter_interface.json`` ``"interface"`` object).

        Raises:
            ValueError: for unknown keys (naming them and the known ones) or values the constructor refuses.
            TypeError: for missing required fields.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelInterface fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    # ---- conversion ----------------------------------------------------------------------------
    def placement(self) -> dict[str, Any]:
        """The fields that decide where adapters sit and what they compute (everything but which methods may be
        added and labels): two interfaces with equal placements give the same adapter weights the same meaning."""
        return {k: v for k, v in self.to_dict().items() if k not in _NON_PLACEMENT_FIELDS}

    def layer_stack(
        self, prefix_location: str = "self_prefix", cross_prefix_location: str = "cross_prefix"
    ) -> LayerStack:
        """This interface as a `LayerStack` of the architecture table (see the module docstring).

        Args:
            prefix_location, cross_prefix_location: prefix tuning's location keys for this stack.
        """
        attn, cross = self.layer_self_attn, self.layer_cross_attn
        attention = None
        if self.attn_o_proj is not None:
            attention = SubBlock(
                output=f"{attn}.{self.attn_o_proj}",
                residual_input=self.layer_pre_self_attn,
                layer_norm=self.layer_ln_1,
                adapter_host="attention_adapters",
            )
        ffn = SubBlock(
            output=self.layer_output_proj,
            residual_input=self.layer_pre_ffn,
            layer_norm=self.layer_ln_2,
            adapter_host="output_adapters",
        )
        cross_block = None
        if cross is not None:
            # AdapterHub hooks the cross-attention module's output, with no norm
            cross_block = SubBlock(
                output=cross,
                residual_input=self.layer_pre_cross_attn,
                layer_norm=None,
                adapter_host="cross_attention_adapters",
            )
        return LayerStack(
            layers=self.model_layers,
            attention=attention,
            ffn=ffn,
            ffn_intermediate=self.layer_intermediate_proj,
            ffn_output=self.layer_output_proj,
            attn_projections=_projections(attn, self),
            fused_qkv=f"{attn}.{self.attn_qkv_proj}" if self.attn_qkv_proj is not None else None,
            cross_attention=cross_block,
            cross_attn_projections=_projections(cross, self) if cross is not None else {},
            prefix_location=prefix_location,
            cross_prefix_location=cross_prefix_location,
            config_attr=self.config_attr,
            hidden_size_attr=self.hidden_size_attr,
            attention_interface=self.attention_interface,
            name=self.name,
        )


def _projections(attention: str, interface: ModelInterface) -> dict[str, str]:
    if interface.attn_qkv_proj is not None:
        return {}
    return {
        "q": f"{attention}.{interface.attn_q_proj}",
        "k": f"{attention}.{interface.attn_k_proj}",
        "v": f"{attention}.{interface.attn_v_proj}",
    }


Interfaces = ModelInterface | Sequence[ModelInterface]
"""One interface, or one per layer stack (numbered in this order: an encoder's before a decoder's)."""


def as_tuple(interface: Interfaces) -> tuple[ModelInterface, ...]:
    """``interface`` as a non-empty tuple of `ModelInterface`s.

    Raises:
        TypeError: for anything but interfaces; ValueError: for an empty sequence or model-level fields
            (``adapter_methods``, ``model_embeddings``, ``base_model``, ``decoder_only``) that differ between them.
    """
    interfaces = (interface,) if isinstance(interface, ModelInterface) else tuple(interface)
    if not interfaces:
        raise ValueError("give at least one ModelInterface")
    for item in interfaces:
        if not isinstance(item, ModelInterface):
            raise TypeError(f"interface must be a ModelInterface or a sequence of them, got {type(item).__name__}")
    for name in _MODEL_FIELDS:
        values = [getattr(i, name) for i in interfaces]
        if any(v != values[0] for v in values):
            raise ValueError(
                f"the interfaces of one model must agree on {name} (it applies to the whole model), got {values}"
            )
    return interfaces


def interface_spec(interface: Interfaces, model_type: str) -> ArchitectureSpec:
    """The `ArchitectureSpec` of a model described by ``interface`` (one `LayerStack` per interface).

    Prefix tuning's location keys: ``self_prefix`` (and ``cross_prefix``); with several stacks of which some have
    cross-attention, the stacks without it use ``encoder_prefix`` (AdapterHub's encoder-decoder keys); keys that
    would repeat get the stack's index appended.

    Raises:
        ValueError, TypeError: as `as_tuple`.
    """
    interfaces = as_tuple(interface)
    encoder_decoder = len(interfaces) > 1 and any(i.layer_cross_attn is not None for i in interfaces)
    used: set[str] = set()
    stacks = []
    for idx, item in enumerate(interfaces):
        location = "encoder_prefix" if encoder_decoder and item.layer_cross_attn is None else "self_prefix"
        locations = [location, "cross_prefix"]
        for j, key in enumerate(locations):
            if key in used:
                locations[j] = f"{key}_{idx}"
        used.update(locations)
        stacks.append(item.layer_stack(*locations))
    first = interfaces[0]
    return ArchitectureSpec(
        model_type=model_type,
        stacks=tuple(stacks),
        embeddings=first.model_embeddings,
        decoder_only=first.decoder_only,
        adapter_methods=first.adapter_methods,
    )


def check_paths(interface: Interfaces, base_model: nn.Module) -> None:
    """Check that every path of ``interface`` exists in ``base_model`` (in every layer of each stack).

    Raises:
        ValueError: naming every missing path: the field, its value and where it was looked for.
    """
    problems: list[str] = []
    for item in as_tuple(interface):
        if item.model_embeddings is not None and _find(base_model, item.model_embeddings) is None:
            problems.append(f"model_embeddings={item.model_embeddings!r} (in {type(base_model).__name__})")
        layers = _find(base_model, item.model_layers)
        if not isinstance(layers, Iterable) or len(list(layers)) == 0:  # type: ignore[arg-type]
            problems.append(
                f"model_layers={item.model_layers!r} (a non-empty layer list in {type(base_model).__name__})"
            )
            continue
        missing: dict[str, list[int]] = {}
        for idx, layer in enumerate(layers):  # type: ignore[arg-type]
            for name in _LAYER_FIELDS:
                path = getattr(item, name)
                if path is not None and _find(layer, path) is None:
                    missing.setdefault(f"{name}={path!r} (in the layer)", []).append(idx)
            for owner_field in ("layer_self_attn", "layer_cross_attn"):
                owner_path = getattr(item, owner_field)
                owner = _find(layer, owner_path) if owner_path is not None else None
                if owner is None:
                    continue
                for name in _ATTENTION_FIELDS:
                    path = getattr(item, name)
                    if path is not None and _find(owner, path) is None:
                        where = owner_field.removeprefix("layer_").replace("_attn", "-attention")
                        missing.setdefault(f"{name}={path!r} (in the {where} module)", []).append(idx)
        for what, indices in missing.items():
            problems.append(f"{what} of layers {indices} of {item.model_layers!r}")
    if problems:
        raise ValueError(
            f"the ModelInterface does not fit {type(base_model).__name__}; no such module: " + "; ".join(problems)
        )


def _find(root: nn.Module, path: str) -> Any:
    try:
        return get_submodule(root, path)
    except AttributeError:
        return None


def method_families(config: Any) -> list[str]:
    """The method families (`ADAPTER_METHODS` names) an adapter config uses, as AdapterHub counts them: a bottleneck
    config with ``inv_adapter`` is ``bottleneck`` and ``invertible``; a config union is all its parts'."""
    parts = getattr(config, "configs", None)
    if isinstance(parts, (tuple, list)):
        return [family for part in parts for family in method_families(part)]
    families = ["invertible"] if getattr(config, "inv_adapter", None) else []
    architecture = getattr(config, "architecture", None)
    families.append({None: "bottleneck", "mtl_lora": "lora"}.get(architecture, architecture))
    return families


def check_adapter_methods(spec: ArchitectureSpec, config: Any, adapter_name: str) -> None:
    """Refuse ``config`` if it uses a method family ``spec.adapter_methods`` does not list.

    Raises:
        ValueError: naming the adapter, the families it needs and those the model allows.
    """
    if spec.adapter_methods is None:
        return
    refused = [f for f in method_families(config) if f not in spec.adapter_methods]
    if refused:
        raise ValueError(
            f"adapter {adapter_name!r} ({type(config).__name__}) needs the method(s) {refused}, which this "
            f"{spec.model_type!r} model does not allow; its interface allows adapter_methods="
            f"{list(spec.adapter_methods)}"
        )


__all__ = [
    "ADAPTERHUB_FIELDS",
    "ADAPTER_METHODS",
    "Interfaces",
    "ModelInterface",
    "as_tuple",
    "check_adapter_methods",
    "check_paths",
    "interface_spec",
    "method_families",
]
