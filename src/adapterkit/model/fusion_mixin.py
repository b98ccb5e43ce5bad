"""`FusionMixin`: AdapterHub's AdapterFusion API (add, delete, train, save, load) on adapter models.

A fusion is registered in ``model.adapters_config`` under its name (``"a,b,c"`` by default, or a
custom name) with its config and the adapters it fuses, and has one `AdapterFusionLayer` at every
bottleneck site where all fused adapters have a module. ``Fuse(...)`` blocks in a setup run it.

Deleting an adapter deletes the fusions that fuse it (AdapterHub leaves them dangling); reloading an
adapter with `load_adapter` keeps them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..composition import AdapterCompositionBlock, AdapterSetupSpec, Fuse, parse_composition
from ..configs import AdapterFusionConfig, config_hash
from ..integration.target import ModelTarget
from ..methods import LayerModules, method_for
from ..methods.fusion import (
    add_fusion_layers,
    delete_fusion_layers,
    fusion_layers,
    fusion_regularization_loss,
    fusion_sites,
    iter_fusion_layers,
)
from .adapters_config import ModelAdaptersConfig

logger = logging.getLogger(__name__)

FusionSpec = Fuse | list[str] | tuple[str, ...] | str


class FusionMixin:
    """AdapterFusion management; a base of `ModelAdaptersMixin` (which provides the attributes used here)."""

    adapters_config: ModelAdaptersConfig
    _adapter_target: ModelTarget

    # ---- set-up ----------------------------------------------------------------------------
    def _init_fusions(self) -> None:
        """Re-create the fusions listed in ``config.adapters`` (after its adapters), and the adapter-transformers
        v1 ``config.adapter_fusion_models`` / ``config.adapter_fusion`` entries."""
        config = self.config  # type: ignore[attr-defined]
        saved = getattr(config, "adapters", None)
        if isinstance(saved, Mapping):
            for name, (fusion_config, adapter_names) in ModelAdaptersConfig.fusions_from_dict(dict(saved)).items():
                self.add_adapter_fusion(adapter_names, fusion_config, name=name)
        legacy_config = getattr(config, "adapter_fusion", None)
        for adapter_names in getattr(config, "adapter_fusion_models", None) or []:
            names = adapter_names.split(",") if isinstance(adapter_names, str) else list(adapter_names)
            if ",".join(names) not in self.adapters_config.fusions:
                self.add_adapter_fusion(names, legacy_config)

    # ---- add / delete ----------------------------------------------------------------------
    def add_adapter_fusion(
        self,
        adapter_names: FusionSpec,
        config: AdapterFusionConfig | Mapping[str, Any] | str | os.PathLike | None = None,
        name: str | None = None,
        overwrite_ok: bool = False,
        set_active: bool = False,
    ) -> None:
        """Add an AdapterFusion layer over existing bottleneck adapters.

        Layers are added at every adapter site (layer and location) where all fused adapters have a
        module; a ``Fuse`` block does nothing at other sites.

        Args:
            adapter_names: a ``Fuse`` block (its children may be Stacks: the last adapter of each is
                fused), a list of adapter names, or a comma-separated string of names.
            config: a fusion config, dict, alias (``"static"``, ``"dynamic"``) or JSON path; None means
                ``"dynamic"``.
            name: the fusion's name; default the block's name, i.e. the fused names joined by ``","``.
            overwrite_ok: replace an existing fusion of that name instead of raising.
            set_active: activate the fusion (the given ``Fuse`` block, or ``Fuse(*adapter_names, name=name)``).

        Raises:
            ValueError: for a taken or malformed name, an unknown adapter, an adapter whose method has no
                fusion, a repeated adapter, adapters that share no site, or an invalid config. The model
                is left unchanged.
        """
        block, fused = _resolve_add(adapter_names)
        name = name if name is not None else (block.name if block is not None else ",".join(fused))
        _check_fusion_name(name)
        if len(set(fused)) != len(fused):
            raise ValueError(f"AdapterFusion {name!r} names an adapter twice: {fused}")
        needed = sorted(block.flatten()) if block is not None else fused
        for adapter in needed:
            adapter_config = self.adapters_config.get(adapter)
            if adapter_config is None:
                raise ValueError(
                    f"cannot fuse adapter {adapter!r}: this model has no adapter of that name "
                    f"(adapters: {sorted(self.adapters_config)})"
                )
            method = method_for(adapter_config)
            if Fuse not in method.supported_blocks:
                raise ValueError(
                    f"cannot fuse adapter {adapter!r}: {method.name} adapters do not support Fuse "
                    "(AdapterFusion is defined for bottleneck adapters)"
                )
        resolved = AdapterFusionConfig.load(config)
        if not fusion_sites(self._adapter_target, fused):
            raise ValueError(
                f"adapters {fused} share no adapter site (layer and location), so AdapterFusion {name!r} would "
                "do nothing; fuse adapters placed at the same locations (e.g. all output adapters)"
            )
        if name in self.adapters_config.fusions:
            if not overwrite_ok:
                raise ValueError(
                    f"an AdapterFusion named {name!r} exists already; pass overwrite_ok=True to replace it"
                )
            self.delete_adapter_fusion(name)
        add_fusion_layers(self._adapter_target, name, fused, resolved)
        self.adapters_config.add_fusion(name, fused, resolved)
        if set_active:
            self.set_active_adapters(block if block is not None else fuse_block(fused, name))  # type: ignore[attr-defined]

    def delete_adapter_fusion(self, adapter_names: FusionSpec) -> None:
        """Remove an AdapterFusion and its layers; a setup using it is deactivated.

        Args:
            adapter_names: the fusion's ``Fuse`` block, name, or list of fused adapter names. An unknown
                fusion is logged and ignored, as in AdapterHub.
        """
        name = _fusion_name(adapter_names)
        if name not in self.adapters_config.fusions:
            logger.warning("no AdapterFusion named %r to delete", name)
            return
        delete_fusion_layers(self._adapter_target, name)
        self.adapters_config.remove_fusion(name)

    def get_adapter_fusion(self, adapter_names: FusionSpec) -> LayerModules:
        """``{layer_idx: {location_key: AdapterFusionLayer}}`` of a fusion (empty if unknown)."""
        return fusion_layers(self._adapter_target, _fusion_name(adapter_names))

    def _fusion_parameters(self, name: str) -> list[nn.Parameter]:
        layers = [m for per_layer in self.get_adapter_fusion(name).values() for m in per_layer.values()]
        return [p for m in layers for p in m.parameters()]

    def _validate_fuse(self, block: Fuse) -> None:
        """Check that ``block`` names a fusion of this model that fuses the block's children.

        Raises:
            ValueError: naming the fusion, and saying how to add it.
        """
        config, adapter_names = self.adapters_config.get_fusion(block.name)
        if config is None:
            raise ValueError(
                f"{block!r} needs an AdapterFusion named {block.name!r}, which this model does not have; add it "
                f"with model.add_adapter_fusion(...) or load it with model.load_adapter_fusion(...) "
                f"(fusions: {sorted(self.adapters_config.fusions)})"
            )
        children = [c if isinstance(c, str) else c.last() for c in block]  # type: ignore[union-attr]
        if sorted(children) != sorted(adapter_names):  # type: ignore[arg-type]
            raise ValueError(
                f"{block!r} fuses {children}, but AdapterFusion {block.name!r} was added for {adapter_names}; "
                "give the block the fused adapters, or a name= of a fusion of these adapters"
            )

    # ---- training --------------------------------------------------------------------------
    def train_adapter_fusion(self, adapter_setup: AdapterSetupSpec, unfreeze_adapters: bool = False) -> None:
        """Put the model in training mode with only the fusion layers of ``adapter_setup`` trainable.

        The base model and all adapters are frozen, then the layers of every ``Fuse`` block in the setup
        (and, with ``unfreeze_adapters``, the setup's adapters) are made trainable, and the setup becomes
        active. Models with flexible heads also train the head named like a fusion of the setup, else
        the active head (other heads are frozen).

        Args:
            adapter_setup: a setup containing at least one ``Fuse`` block (e.g. ``Fuse("a", "b", "c")``).
            unfreeze_adapters: also train the fused adapters.

        Raises:
            ValueError: for a setup without a Fuse block, a Fuse whose fusion was not added, or any
                error of `set_active_adapters`.
        """
        setup = parse_composition(adapter_setup)
        fuses = _fuse_blocks(setup) if setup is not None else []
        if not fuses:
            raise ValueError(
                f"train_adapter_fusion needs a setup with a Fuse block, got {setup!r}; "
                "use train_adapter(...) to train adapters"
            )
        self.validate_setup(setup)  # type: ignore[attr-defined]
        self.train()  # type: ignore[attr-defined]
        self.freeze_model(True)  # type: ignore[attr-defined]
        for fuse in fuses:
            for param in self._fusion_parameters(fuse.name):
                param.requires_grad = True
        if unfreeze_adapters:
            for adapter in setup.flatten():  # type: ignore[union-attr]
                for param in self._adapter_parameters(adapter):  # type: ignore[attr-defined]
                    param.requires_grad = True
        self.set_active_adapters(setup)  # type: ignore[attr-defined]
        if hasattr(self, "_trainable_heads"):
            self._trainable_heads(frozenset(f.name for f in fuses))

    def get_fusion_regularization_loss(self) -> torch.Tensor | None:
        """``sum over fusion layers of 0.01 * ||I - W_value||^2`` (AdapterHub's value regularization).

        Counts the layers whose config has ``regularization=True`` and whose value matrix is trainable;
        None if there is none. `AdapterTrainer` adds it to the training loss.
        """
        return fusion_regularization_loss(iter_fusion_layers(self.base_model))  # type: ignore[attr-defined]

    # ---- devices ---------------------------------------------------------------------------
    def adapter_fusion_to(
        self,
        adapter_names: FusionSpec,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Move and/or cast every layer of an AdapterFusion."""
        for per_layer in self.get_adapter_fusion(adapter_names).values():
            for layer in per_layer.values():
                layer.to(device=device, dtype=dtype)

    # ---- persistence -----------------------------------------------------------------------
    def save_adapter_fusion(
        self,
        save_directory: str | os.PathLike,
        adapter_names: FusionSpec,
        meta_dict: dict | None = None,
        with_head: bool | str = False,
        use_safetensors: bool = True,
    ) -> None:
        """Write ``adapter_fusion_config.json`` and the fusion weights to ``save_directory``.

        Args:
            save_directory: the folder (created if missing).
            adapter_names: the fusion's ``Fuse`` block, name, or list of fused adapter names.
            meta_dict: extra keys for ``adapter_fusion_config.json``.
            with_head: also save the head named like the fusion (True) or the head of the given name.
            use_safetensors: write ``model_adapter_fusion.safetensors`` (default) instead of AdapterHub's
                ``pytorch_model_adapter_fusion.bin``.

        Raises:
            ValueError: for an unknown fusion or head.
        """
        from ..io.fusion_io import save_adapter_fusion

        save_adapter_fusion(
            self,  # type: ignore[arg-type]
            save_directory,
            _fusion_name(adapter_names),
            meta_dict=meta_dict,
            with_head=with_head,
            use_safetensors=use_safetensors,
        )

    def load_adapter_fusion(
        self,
        adapter_fusion_name_or_path: str | os.PathLike,
        load_as: str | None = None,
        set_active: bool = False,
        with_head: bool = True,
        use_safetensors: bool = True,
        loading_info: dict | None = None,
    ) -> str:
        """Load an AdapterFusion saved by adapterkit or AdapterHub from a local folder.

        The fused adapters must be loaded already (loading a fusion does not load them). Weights are
        copied into an existing fusion of the same name, config and adapters; otherwise it is replaced.

        Args:
            adapter_fusion_name_or_path: folder holding ``adapter_fusion_config.json`` and the weights
                (``model_adapter_fusion.safetensors`` or ``pytorch_model_adapter_fusion.bin``).
            load_as: the name to give the fusion (default: the saved name).
            set_active: activate ``Fuse(*adapter_names, name=name)`` after loading.
            with_head: also load a head saved in the folder (flexible-head models).
            use_safetensors: accepted for AdapterHub compatibility; the safetensors file is read when
                present, else the ``.bin`` (with ``torch.load(weights_only=True)``).
            loading_info: a dict that receives ``missing_keys`` and ``unexpected_keys``.

        Returns:
            The loaded fusion's name.

        Raises:
            FileNotFoundError, ValueError: for a missing folder or files, a corrupt file, a model-type or
                hidden-size mismatch, fused adapters the model lacks, or weights that do not fit; the
                model is left as it was.
        """
        from ..io.fusion_io import load_adapter_fusion

        return load_adapter_fusion(
            self,  # type: ignore[arg-type]
            adapter_fusion_name_or_path,
            load_as=load_as,
            set_active=set_active,
            with_head=with_head,
            loading_info=loading_info,
        )

    def save_all_adapter_fusions(
        self,
        save_directory: str | os.PathLike,
        meta_dict: dict | None = None,
        use_safetensors: bool = True,
    ) -> None:
        """Save every AdapterFusion into its own sub-folder of ``save_directory`` (named like the fusion)."""
        for name, config in self.adapters_config.fusions.items():
            meta = {"config_id": config_hash(config), **(meta_dict or {})}
            self.save_adapter_fusion(
                os.path.join(save_directory, name), name, meta_dict=meta, use_safetensors=use_safetensors
            )


def fuse_block(adapter_names: list[str] | tuple[str, ...], name: str) -> Fuse:
    """``Fuse(*adapter_names)``, with ``name=`` only when ``name`` is not the default ``"a,b,c"``."""
    return Fuse(*adapter_names, name=None if name == ",".join(adapter_names) else name)


def _resolve_add(adapter_names: FusionSpec) -> tuple[Fuse | None, list[str]]:
    """(the Fuse block if one was given, the fused adapter names: the last adapter of each child)."""
    if isinstance(adapter_names, Fuse):
        fused = [c if isinstance(c, str) else c.last() for c in adapter_names]  # type: ignore[union-attr]
        return adapter_names, fused  # type: ignore[return-value]
    if isinstance(adapter_names, str):
        names = [n.strip() for n in adapter_names.split(",")]
    elif isinstance(adapter_names, (list, tuple)) and all(isinstance(n, str) for n in adapter_names):
        names = list(adapter_names)
    else:
        raise ValueError(
            f"cannot fuse {adapter_names!r}: pass a Fuse block, a list of adapter names or a comma-separated string"
        )
    if not names or not all(names):
        raise ValueError(f"cannot fuse {adapter_names!r}: it names no adapter or an empty one")
    return None, names


def _fusion_name(adapter_names: FusionSpec) -> str:
    """The fusion name a Fuse block, list of names or name refers to."""
    if isinstance(adapter_names, Fuse):
        return adapter_names.name
    if isinstance(adapter_names, (list, tuple)):
        return ",".join(adapter_names)
    if isinstance(adapter_names, str):
        return adapter_names
    raise ValueError(f"{adapter_names!r} does not name an AdapterFusion: pass a Fuse block, a name or a list of names")


def _check_fusion_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "./\\"):
        raise ValueError(
            f"AdapterFusion name {name!r} is not allowed; use a non-empty name without '.', '/' or '\\\\'"
        )


def _fuse_blocks(block: AdapterCompositionBlock) -> list[Fuse]:
    """Every Fuse block in ``block`` (itself included), depth first."""
    found = [block] if isinstance(block, Fuse) else []
    for child in block:
        if isinstance(child, AdapterCompositionBlock):
            found += _fuse_blocks(child)
    return found  # type: ignore[return-value]


__all__ = ["FusionMixin", "fuse_block"]
