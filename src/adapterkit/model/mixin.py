"""`ModelAdaptersMixin`: adding, activating, training, merging, saving and loading adapters.

Mixed into transformers model classes by `AutoAdapterModel` and `adapterkit.init`. transformers 5
puts PEFT's ``add_adapter``/``load_adapter``/``active_adapters``/... on every `PreTrainedModel`;
classes with this mixin own those names deliberately and give them AdapterHub's meaning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..composition import (
    AdapterCompositionBlock,
    AdapterSetupSpec,
    Fuse,
    MultiTask,
    Parallel,
    combination_weights,
    parse_composition,
)
from ..configs import DEFAULT_ADAPTER_CONFIG, AdapterConfig
from ..context import checkpoint_context_fn
from ..integration.architectures import ArchitectureSpec
from ..integration.interface import check_adapter_methods
from ..integration.target import ModelTarget
from ..methods import AdapterMethod, LayerModules, method_for, registered_methods
from .adapters_config import ModelAdaptersConfig
from .fusion_mixin import FusionMixin

logger = logging.getLogger(__name__)


class ModelAdaptersMixin(FusionMixin):
    """Adapter management for a transformers model (AdapterHub's API names and semantics).

    The class it is mixed into must be a `PreTrainedModel`; `_init_adapters` must run once.
    """

    adapters_config: ModelAdaptersConfig
    _adapter_target: ModelTarget

    # ---- set-up ----------------------------------------------------------------------------
    def _init_adapters(self, spec: ArchitectureSpec | None = None) -> None:
        """Attach the adapter machinery and re-create adapters listed in ``config.adapters``."""
        self.adapters_config = ModelAdaptersConfig()
        self._adapter_target = ModelTarget(
            self.base_model, self._stored_setup, spec, validate_setup=self.validate_setup  # type: ignore[attr-defined]
        )
        self._adapter_target.install_context_guards(self)  # type: ignore[arg-type]
        self.model_frozen = False
        saved = getattr(self.config, "adapters", None)  # type: ignore[attr-defined]
        if isinstance(saved, Mapping):
            for name, config in ModelAdaptersConfig.configs_from_dict(saved).items():
                self.add_adapter(name, config)
        self._init_fusions()

    def _stored_setup(self) -> tuple[AdapterCompositionBlock | None, frozenset[int]]:
        return self.adapters_config.active_setup, self.adapters_config.skip_layers

    # ---- add / delete ----------------------------------------------------------------------
    def add_adapter(
        self,
        adapter_name: str,
        config: AdapterConfig | Mapping[str, Any] | str | None = None,
        overwrite_ok: bool = False,
        set_active: bool = False,
        **method_options: Any,
    ) -> None:
        """Add a new adapter to every layer (except the config's ``leave_out``).

        Args:
            adapter_name: a name without ``.`` or ``,``.
            config: a config, dict, alias, config string or JSON path; None means ``"seq_bn"``.
            overwrite_ok: replace an existing adapter of that name instead of raising.
            set_active: activate the new adapter.
            **method_options: set-up options of the config's method, e.g. ``tokenizer`` for a prompt tuning
                adapter initialised ``from_string``.

        Raises:
            ValueError: for a bad or taken name, or a config this architecture cannot take. The
                model is left unchanged.
            TypeError: for a method option the method does not take.
        """
        _check_name(adapter_name)
        resolved = AdapterConfig.load(config if config is not None else DEFAULT_ADAPTER_CONFIG)
        method = method_for(resolved)
        check_adapter_methods(self._adapter_target.spec, resolved, adapter_name)
        if adapter_name in self.adapters_config:
            if not overwrite_ok:
                raise ValueError(
                    f"an adapter named {adapter_name!r} exists already; pass overwrite_ok=True to replace it"
                )
            self.delete_adapter(adapter_name)
        try:
            created = method.add(self._adapter_target, adapter_name, resolved, **method_options)
        except Exception:
            method.delete(self._adapter_target, adapter_name)
            raise
        self._adapter_target.adapter_layers[adapter_name] = frozenset(created)
        self.adapters_config.add(adapter_name, resolved)
        if set_active:
            self.set_active_adapters(adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter and its modules (an unknown name is logged and ignored, as in AdapterHub)."""
        config = self.adapters_config.get(adapter_name)
        if config is None:
            logger.warning("no adapter named %r to delete", adapter_name)
            return
        method_for(config).delete(self._adapter_target, adapter_name)
        self._adapter_target.adapter_layers.pop(adapter_name, None)
        self.adapters_config.remove(adapter_name)

    def has_adapters(self) -> bool:
        """Whether the model has at least one adapter."""
        return len(self.adapters_config) > 0

    def get_adapter(self, name: str) -> LayerModules:
        """``{layer_idx: {location_key: module}}`` of adapter ``name`` (empty if unknown)."""
        config = self.adapters_config.get(name)
        return method_for(config).modules(self._adapter_target, name) if config is not None else {}

    def _adapter_modules(self, name: str) -> list[nn.Module]:
        """Every module of adapter ``name``: those in its layers and those its layers share."""
        config = self.adapters_config.get(name)
        if config is None:
            return []
        method = method_for(config)
        modules = [m for per_layer in method.modules(self._adapter_target, name).values() for m in per_layer.values()]
        return modules + method.shared_modules(self._adapter_target, name)

    def _adapter_parameters(self, name: str) -> list[nn.Parameter]:
        return [p for m in self._adapter_modules(name) for p in m.parameters()]

    # ---- activation ------------------------------------------------------------------------
    def set_active_adapters(
        self, adapter_setup: AdapterSetupSpec, skip_layers: list[int] | None = None
    ) -> None:
        """Make ``adapter_setup`` run in every forward (until changed); None deactivates all.

        Merged LoRA/(IA)^3 weights are reset first, as in AdapterHub.

        Args:
            adapter_setup: a name, list of names or composition block.
            skip_layers: layer ids in which no adapter runs (AdapterDrop at inference).

        Raises:
            ValueError: for an unknown adapter or a block a method cannot run, naming both.
        """
        setup = parse_composition(adapter_setup)
        self.validate_setup(setup)
        self.reset_adapter()
        self.adapters_config.active_setup = setup
        self.adapters_config.skip_layers = frozenset(skip_layers or ())

    def validate_setup(self, setup: AdapterCompositionBlock | None) -> None:
        """Check that every adapter in ``setup`` exists and its method supports every block around it.

        Raises:
            ValueError: naming the adapter, the block and what is allowed.
        """
        if setup is None:
            return
        self._validate_block(setup, ())
        for method in registered_methods():
            method.validate_setup(self._adapter_target, setup, self.adapters_config.adapters)

    def _validate_block(self, block: AdapterCompositionBlock, parents: tuple[AdapterCompositionBlock, ...]) -> None:
        enclosing = (*parents, block)
        if isinstance(block, Parallel) and self._adapter_target.spec.has_towers:
            raise ValueError(
                f"{block!r} is not available for {self._adapter_target.spec.model_type!r}: its towers run on inputs "
                "of their own, so Parallel's channels would be replicated per tower and mixed in their joint output "
                "(AdapterHub refuses it too); run the adapters one after another"
            )
        for child in block:
            if isinstance(child, AdapterCompositionBlock):
                self._validate_block(child, enclosing)
            elif child is not None:
                self._validate_adapter_in(child, enclosing)
        if isinstance(block, Fuse):  # after the children: an adapter that cannot be fused says so first
            self._validate_fuse(block)

    def _validate_adapter_in(self, name: str, enclosing: tuple[AdapterCompositionBlock, ...]) -> None:
        config = self.adapters_config.get(name)
        if config is None:
            raise ValueError(f"no adapter named {name!r}; this model has {sorted(self.adapters_config)}")
        method = method_for(config)
        for block in enclosing:
            if not isinstance(block, method.supported_blocks):
                allowed = [b.__name__ for b in method.supported_blocks]
                raise ValueError(
                    f"adapter {name!r} ({method.name}) cannot run inside {type(block).__name__} ({block!r}); "
                    f"{method.name} adapters can sit in: {allowed}"
                )

    @property
    def active_adapters(self) -> AdapterCompositionBlock | None:
        """The stored active setup (AdapterHub's property; replaces transformers' PEFT method)."""
        return self.adapters_config.active_setup

    @active_adapters.setter
    def active_adapters(self, adapter_setup: AdapterSetupSpec) -> None:
        self.set_active_adapters(adapter_setup)

    # ---- training --------------------------------------------------------------------------
    def freeze_model(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) every parameter of the base model, adapters included."""
        for param in self.base_model.parameters():  # type: ignore[attr-defined]
            param.requires_grad = not freeze
        self.model_frozen = freeze

    def train_adapter(self, adapter_setup: AdapterSetupSpec, train_embeddings: bool = False) -> None:
        """Put the model in training mode with only the adapters of ``adapter_setup`` trainable.

        The base model and other adapters are frozen; the setup becomes active.

        Args:
            adapter_setup: the adapters to train.
            train_embeddings: also train the input embeddings.

        Raises:
            ValueError: as `set_active_adapters`.
        """
        setup = parse_composition(adapter_setup)
        self.validate_setup(setup)
        self.train()  # type: ignore[attr-defined]
        self.freeze_model(True)
        for name in setup.flatten() if setup is not None else ():
            for param in self._adapter_parameters(name):
                param.requires_grad = True
        if train_embeddings:
            for param in self.get_input_embeddings().parameters():  # type: ignore[attr-defined]
                param.requires_grad = True
        self.set_active_adapters(setup)

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """transformers' activation (gradient) checkpointing, made to recompute layers with the same adapters.

        transformers checkpoints each layer's ``forward``; the recomputation in the backward pass
        runs after this forward's context closed, so a ``context_fn`` re-enters it. That needs
        non-reentrant checkpointing (``use_reentrant=False``, transformers' default).

        Raises:
            ValueError: for ``use_reentrant=True`` or a ``context_fn`` of the caller's.
        """
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        if kwargs["use_reentrant"] or "context_fn" in kwargs:
            raise ValueError(
                "adapter models need non-reentrant checkpointing with adapterkit's context_fn; "
                "do not pass use_reentrant=True or context_fn"
            )
        kwargs["context_fn"] = checkpoint_context_fn
        super().activation_checkpointing_enable(kwargs, every_n_layers=every_n_layers, offload=offload)  # type: ignore[misc]

    # ---- merging ---------------------------------------------------------------------------
    def merge_adapter(self, name: str) -> None:
        """Fold adapter ``name`` into the base weights so it costs nothing at inference.

        Raises:
            ValueError: for an unknown adapter, a method that cannot merge, or a projection that
                already holds another merged adapter.
        """
        config = self.adapters_config.get(name)
        if config is None:
            raise ValueError(f"no adapter named {name!r}; this model has {sorted(self.adapters_config)}")
        method_for(config).merge(self._adapter_target, name)

    def reset_adapter(self) -> None:
        """Undo every merge, restoring the original base weights exactly."""
        for method in registered_methods():
            method.reset(self._adapter_target)

    # ---- averaging (task arithmetic) -------------------------------------------------------
    def average_adapter(
        self,
        adapter_name: str,
        adapter_list: list[str] | Mapping[str, float],
        weights: list[float] | None = None,
        combine_strategy: str = "linear",
        normalize_weights: bool = True,
        overwrite_ok: bool = False,
        set_active: bool = False,
        svd_rank: int | None = None,
    ) -> None:
        """Add adapter ``adapter_name`` as a weighted combination of existing adapters of one config.

        Each method averages its own parameters (`AdapterMethod.average`): ``"linear"`` (``sum_i w_i theta_i``
        for every tensor) works for every method; the LoRA family adds ``"lora_linear_only_negate_b"`` and
        ``"lora_delta_w_svd"`` (see docs/unions_and_averaging.md). Negative weights are allowed (unlearning).

        Args:
            adapter_name: the new adapter.
            adapter_list: the adapters to combine, or a dict name -> weight (its values are the weights).
            weights: one weight per adapter (default: equal weights ``1 / n``).
            combine_strategy: ``"linear"``, ``"lora_linear_only_negate_b"`` or ``"lora_delta_w_svd"``.
            normalize_weights: divide given weights by their sum.
            overwrite_ok: replace an existing adapter ``adapter_name``.
            set_active: activate the new adapter.
            svd_rank: the rank of the result for ``"lora_delta_w_svd"`` (the new config gets ``r=svd_rank``).

        Raises:
            ValueError: for an unknown strategy or adapter, an empty list, weights that do not match the list or
                sum to 0, adapters with different configs (naming them), a taken name, or a strategy the
                adapters' method does not support. The model is left unchanged.
        """
        strategies = ("linear", "lora_linear_only_negate_b", "lora_delta_w_svd")
        if combine_strategy not in strategies:
            raise ValueError(f"combine_strategy {combine_strategy!r} is not known; allowed: {list(strategies)}")
        if isinstance(adapter_list, Mapping):
            weights = list(adapter_list.values()) if weights is None else weights
        names = list(adapter_list)
        if not names:
            raise ValueError("average_adapter needs at least one adapter to average")
        from ..configs import config_hash

        config = None
        for name in names:
            other = self.adapters_config.get(name)
            if other is None:
                raise ValueError(f"no adapter named {name!r}; this model has {sorted(self.adapters_config)}")
            if config is None:
                config = other
            elif config_hash(config, ignore_params=("dropout", "init_weights")) != config_hash(
                other, ignore_params=("dropout", "init_weights")
            ):
                raise ValueError(
                    f"cannot average adapters {names[0]!r} and {name!r}: their configs differ "
                    f"({config!r} vs {other!r}); average adapters of one config"
                )
        assert config is not None
        shares = combination_weights(len(names), weights, normalize_weights, "average_adapter", f"adapters {names}")
        combined = dict(zip(names, shares, strict=True))
        if svd_rank is not None:
            if combine_strategy == "lora_delta_w_svd":
                try:
                    config = config.replace(r=svd_rank)
                except TypeError:
                    raise ValueError(
                        f"combine_strategy 'lora_delta_w_svd' is not supported for {method_for(config).name} adapters "
                        f"{names} (it needs a config with a rank r)"
                    ) from None
            else:
                logger.warning("svd_rank applies only to combine_strategy 'lora_delta_w_svd'; ignoring it")
        if adapter_name in self.adapters_config and not overwrite_ok:
            raise ValueError(f"an adapter named {adapter_name!r} exists already; pass overwrite_ok=True to replace it")
        if adapter_name in names:
            raise ValueError(f"the averaged adapter {adapter_name!r} cannot be one of the adapters averaged")
        method = method_for(config)
        if combine_strategy == "lora_delta_w_svd" and svd_rank is None:
            raise ValueError("combine_strategy 'lora_delta_w_svd' needs svd_rank (the rank of the averaged adapter)")
        self.add_adapter(adapter_name, config, overwrite_ok=overwrite_ok)
        try:
            method.average(self._adapter_target, adapter_name, config, combined, combine_strategy, svd_rank)
        except Exception:
            self.delete_adapter(adapter_name)
            raise
        if set_active:
            self.set_active_adapters(adapter_name)

    def eject_prefix_tuning(self, name: str) -> None:
        """Replace prefix tuning adapter ``name``'s reparametrizing MLP by the flat prefixes it produces.

        The outputs stay the same and the MLP's parameters are gone (for inference or further flat
        training). The stored config becomes ``flat=True``, so a saved and reloaded adapter has the same
        form (AdapterHub keeps ``flat=False`` there, and the reload does not fit).

        Raises:
            ValueError: for an unknown adapter or one whose method cannot be ejected (not prefix tuning).
        """
        config = self.adapters_config.get(name)
        if config is None:
            raise ValueError(f"no adapter named {name!r}; this model has {sorted(self.adapters_config)}")
        method = method_for(config)
        eject = getattr(method, "eject", None)
        if eject is None:
            raise ValueError(f"adapter {name!r} is a {method.name} adapter; only prefix tuning adapters can be ejected")
        self.adapters_config.add(name, eject(self._adapter_target, name, config))

    # ---- parameter sharing (MTL-LoRA) ------------------------------------------------------
    def share_parameters(
        self,
        adapter_names: MultiTask | list[str] | str,
        name: str | None = None,
        reference_adapter_name: str | None = None,
    ) -> None:
        """Let adapters share parameters (AdapterHub's API; MTL-LoRA tasks share ``lora_A`` and ``lora_B``).

        Args:
            adapter_names: the adapters, as a `MultiTask` block, a list or a comma-separated string.
            name: the name of the sharing (default: the names joined by ``","``), for `unshare_parameters`.
            reference_adapter_name: whose current values all of them take (default: the first).

        Raises:
            ValueError: for an unknown adapter, an empty list, a reference not in the list, or a method that
                cannot share parameters.
            TypeError: for adapters whose configs are not multi-task configs (`MultiTaskConfig`).
        """
        names = _sharing_names(adapter_names)
        method = self._sharing_method(names, "share_parameters")
        method.share_parameters(  # type: ignore[attr-defined]
            self._adapter_target,
            names,
            self.adapters_config.adapters,
            name or ",".join(names),
            reference_adapter_name or names[0],
        )

    def unshare_parameters(self, adapter_names: MultiTask | list[str] | str, name: str | None = None) -> None:
        """Undo `share_parameters`: every adapter gets its own copy of the shared values.

        Args:
            adapter_names: as given to `share_parameters`.
            name: the sharing's name (default: the names joined by ``","``).

        Raises:
            ValueError: for an unknown adapter or if nothing is shared under that name.
        """
        names = _sharing_names(adapter_names)
        method = self._sharing_method(names, "unshare_parameters")
        method.unshare_parameters(self._adapter_target, name or ",".join(names))  # type: ignore[attr-defined]

    def _sharing_method(self, names: list[str], operation: str) -> AdapterMethod:
        if not names:
            raise ValueError(f"{operation} needs at least one adapter name")
        methods = []
        for adapter in names:
            config = self.adapters_config.get(adapter)
            if config is None:
                raise ValueError(f"no adapter named {adapter!r}; this model has {sorted(self.adapters_config)}")
            methods.append(method_for(config))
        if any(m is not methods[0] for m in methods) or not hasattr(methods[0], operation):
            raise ValueError(
                f"adapters {names} ({sorted({m.name for m in methods})}) cannot share parameters; "
                "share_parameters is for multi-task adapters of one method (e.g. MTLLoRAConfig)"
            )
        return methods[0]

    # ---- devices and summary ---------------------------------------------------------------
    def adapter_to(
        self, name: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        """Move and/or cast every module of adapter ``name``."""
        for module in self._adapter_modules(name):
            module.to(device=device, dtype=dtype)

    def adapter_summary(self, as_dict: bool = False) -> str | list[dict[str, Any]]:
        """A table of adapters: name, method, parameter count, share of the base model, active, trainable.

        Args:
            as_dict: return the rows as dicts instead of a formatted table.
        """
        adapter_param_ids: set[int] = set()
        rows: list[dict[str, Any]] = []
        active = (
            self.adapters_config.active_setup.flatten() if self.adapters_config.active_setup else frozenset()
        )
        for name, config in self.adapters_config.adapters.items():
            params = self._adapter_parameters(name)
            adapter_param_ids.update(id(p) for p in params)
            rows.append(
                {
                    "name": name,
                    "architecture": method_for(config).name,
                    "#param": sum(p.numel() for p in params),
                    "active": name in active,
                    "train": any(p.requires_grad for p in params),
                }
            )
        base = sum(p.numel() for p in self.base_model.parameters() if id(p) not in adapter_param_ids)  # type: ignore[attr-defined]
        for row in rows:
            row["%param"] = 100.0 * row["#param"] / base
        rows.append(
            {
                "name": "Full model",
                "architecture": "",
                "#param": base,
                "%param": 100.0,
                "active": "",
                "train": any(
                    p.requires_grad
                    for p in self.base_model.parameters()
                    if id(p) not in adapter_param_ids  # type: ignore[attr-defined]
                ),
            }
        )
        if as_dict:
            return rows
        header = f"{'Name':<20}{'Architecture':<14}{'#Param':>12}{'%Param':>10}{'Active':>8}{'Train':>7}"
        lines = [header, "-" * len(header)]
        for r in rows:
            lines.append(
                f"{r['name']:<20}{r['architecture']:<14}{r['#param']:>12,}{r['%param']:>10.3f}{str(r['active']):>8}"
                f"{str(r['train']):>7}"
            )
        return "\n".join(lines)

    # ---- persistence -----------------------------------------------------------------------
    def save_adapter(
        self,
        save_directory: str | os.PathLike,
        adapter_name: str,
        meta_dict: dict | None = None,
        use_safetensors: bool = True,
        with_head: bool = True,
    ) -> None:
        """Write ``adapter_config.json`` and the adapter weights to ``save_directory`` (plus ``adapter_interface.json``
        for a model initialised with a `ModelInterface`, as AdapterHub).

        Args:
            save_directory: the folder (created if missing).
            adapter_name: the adapter to save.
            meta_dict: extra keys for ``adapter_config.json``.
            use_safetensors: write ``adapter.safetensors`` (default) instead of ``pytorch_adapter.bin``.
            with_head: also save the head of the same name, if the model has flexible heads.

        Raises:
            ValueError: for an unknown adapter.
        """
        from ..io.adapter_io import save_adapter
        from ..io.interface_io import write_interface

        save_adapter(
            self,
            save_directory,
            adapter_name,
            meta_dict=meta_dict,
            use_safetensors=use_safetensors,
            with_head=with_head,
        )
        write_interface(self, save_directory)  # adapter_interface.json, for models initialised with an interface

    def load_adapter(
        self,
        adapter_name_or_path: str | os.PathLike,
        load_as: str | None = None,
        set_active: bool = False,
        leave_out: list[int] | None = None,
        loading_info: dict | None = None,
        **kwargs: Any,
    ) -> str:
        """Load an adapter saved by adapterkit or AdapterHub from a local folder.

        Args:
            adapter_name_or_path: folder holding ``adapter_config.json`` and the weights.
            load_as: the name to give it (default: the saved name).
            set_active: activate it after loading.
            leave_out: extra layer ids to leave out (added to the saved ``leave_out``).
            loading_info: a dict that receives ``missing_keys`` and ``unexpected_keys``.
            **kwargs: ``with_head`` (default True: also load a saved head, for flexible-head models)
                and ``id2label`` (override the head's labels).

        Returns:
            The loaded adapter's name.

        Raises:
            FileNotFoundError, ValueError: for a missing folder or files, a corrupt file, a
                model-type or hidden-size mismatch, an ``adapter_interface.json`` that places adapters
                elsewhere than this model's interface, or weights that do not fit; the model is left
                as it was.
        """
        from ..io.adapter_io import load_adapter
        from ..io.interface_io import check_saved_interface

        check_saved_interface(self, adapter_name_or_path)
        return load_adapter(
            self,
            adapter_name_or_path,
            load_as=load_as,
            set_active=set_active,
            leave_out=leave_out,
            loading_info=loading_info,
            **kwargs,
        )

    def save_all_adapters(
        self,
        save_directory: str | os.PathLike,
        meta_dict: dict | None = None,
        use_safetensors: bool = True,
        with_head: bool = True,
    ) -> None:
        """Save every adapter into its own sub-folder of ``save_directory``."""
        from ..configs import config_hash

        for name, config in self.adapters_config.adapters.items():
            meta = {"config_id": config_hash(config), **(meta_dict or {})}
            self.save_adapter(
                os.path.join(save_directory, name),
                name,
                meta_dict=meta,
                use_safetensors=use_safetensors,
                with_head=with_head,
            )

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """transformers' ``save_pretrained``, with the adapters recorded in ``config.json["adapters"]`` (and
        ``adapter_interface.json`` for a model initialised with a `ModelInterface`)."""
        from ..io.interface_io import write_interface

        self.config.adapters = self.adapters_config.to_dict()  # type: ignore[attr-defined]
        super().save_pretrained(save_directory, **kwargs)  # type: ignore[misc]
        write_interface(self, save_directory)


def _sharing_names(adapter_names: MultiTask | list[str] | str) -> list[str]:
    """Adapter names from a `MultiTask` block, a list or a comma-separated string."""
    if isinstance(adapter_names, MultiTask):
        return [c for c in adapter_names.children if isinstance(c, str)]
    if isinstance(adapter_names, str):
        return [n.strip() for n in adapter_names.split(",") if n.strip()]
    return list(adapter_names)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or any(c in name for c in ".,|[] "):
        raise ValueError(
            f"adapter name {name!r} is not allowed; use a non-empty name without '.', ',', '|', '[', ']' or spaces"
        )
    if hasattr(nn.ModuleDict, name):  # adapters are ModuleDict entries: "double", "train", "to" would clash
        raise ValueError(f"adapter name {name!r} is the name of a torch Module attribute; choose another name")


__all__ = ["AdapterMethod", "ModelAdaptersMixin"]
