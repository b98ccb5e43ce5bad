"""`AdapterTrainer`: transformers' `Trainer` for training adapters (AdapterHub's ``AdapterTrainer``).

Differences from `transformers.Trainer`:

- it refuses models with no active adapters, and training runs in which no active adapter
  parameter is trainable or the base model is not frozen (``model.train_adapter(...)`` does both);
- ``label_names`` default to the active flexible head's label names;
- checkpoints hold only the adapters (one AdapterHub-format sub-folder each, with the head of the
  same name), the other heads, and any other trainable parameter (see `EXTRA_TRAINABLE_NAME`) —
  never the full model weights;
- resuming and ``load_best_model_at_end`` reload those folders into the model in place;
- AdapterFusion training (a ``Fuse`` of the active setup has trainable layers, see
  ``model.train_adapter_fusion``): the value regularization ``model.get_fusion_regularization_loss()``
  is added to the training loss in ``compute_loss``, so it is part of the backward pass of the same
  step (AdapterHub back-propagates it in ``on_step_end``, after the optimizer step, so its gradient
  lands in the next step); fusion value matrices get no weight decay (they are pulled towards the
  identity instead); checkpoints also hold one sub-folder per trained fusion.

Written against transformers 5.23's `Trainer` (``_save``, ``_load_from_checkpoint``,
``_load_best_model``, ``create_optimizer``, ``call_model_init``, ``_set_signature_columns_if_needed``,
``compute_loss``, ``get_decay_parameter_names``).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME

from .composition import AdapterCompositionBlock, Fuse
from .io import CONFIG_NAME, FUSION_CONFIG_NAME, HEAD_CONFIG_NAME
from .io.adapter_io import load_head, save_head
from .methods.fusion import fusion_value_parameters, iter_fusion_layers
from .model.mixin import ModelAdaptersMixin

logger = logging.getLogger(__name__)

#: File in a checkpoint holding trainable parameters that are neither adapter nor flexible-head
#: weights (a static head such as ``classifier.*`` on a model given adapters with `adapterkit.init`,
#: input embeddings trained with ``train_adapter(..., train_embeddings=True)``). Written only when
#: there are such parameters; keys are the model's own parameter names.
EXTRA_TRAINABLE_NAME = "extra_trainable_params.safetensors"

_USE_TRAINER = "To train the whole model without adapters, use transformers.Trainer instead."


class AdapterTrainer(Trainer):
    """A `transformers.Trainer` that trains, checkpoints and reloads only adapters (and heads).

    Args:
        model: an adapterkit model (``AutoAdapterModel`` or a model given adapters by
            `adapterkit.init`) on which ``train_adapter(...)`` has been called. Positional and keyword
            arguments other than ``adapter_names`` are `transformers.Trainer`'s.
        adapter_names: if given, ``model.set_active_adapters(adapter_names)`` is called first.

    Raises:
        ValueError: if the model does not have the adapter mixin or has no active adapters (the
            message says to call ``model.train_adapter(...)`` or use `transformers.Trainer`); when
            training starts, if no parameter of the active adapters is trainable or the base model is
            not frozen.
    """

    def __init__(self, model: nn.Module | None = None, *args: Any, adapter_names: Any = None, **kwargs: Any):
        self._adapter_names = adapter_names
        if model is not None:
            _activate_and_check(model, adapter_names)
        # transformers refuses "purely quantized" models without PEFT adapters; adapterkit adapters
        # make them trainable, so hide the flag during __init__ (as AdapterHub does).
        quantized = model is not None and getattr(model, "is_quantized", False)
        if quantized:
            model.is_quantized = False
        try:
            super().__init__(model, *args, **kwargs)
        finally:
            if quantized:
                model.is_quantized = True
        if model is None:  # built by model_init inside Trainer.__init__
            _activate_and_check(self.model, None)

        unwrapped = self._adapter_model()
        # label inputs of the active head(s) (e.g. QA's start/end positions; with Parallel, every
        # channel's head), instead of transformers' guess from the forward signature
        if self.args.label_names is None:
            names = _active_label_names(unwrapped)
            if names:
                self.label_names = names
        self.add_callback(_AdapterTrainerCallback())

    # ---- model set-up --------------------------------------------------------------------------
    def call_model_init(self, trial: Any = None) -> nn.Module:
        """transformers' ``call_model_init``, then activate ``adapter_names`` on the new model.

        Overridden so ``adapter_names`` also applies to models built by ``model_init`` (also during
        hyperparameter search, where ``train()`` rebuilds the model).
        """
        model = super().call_model_init(trial)
        if getattr(self, "_adapter_names", None) is not None and isinstance(model, ModelAdaptersMixin):
            model.set_active_adapters(self._adapter_names)
        return model

    def _adapter_model(self, model: nn.Module | None = None) -> ModelAdaptersMixin | None:
        """The unwrapped model if it has the adapter mixin, else None."""
        model = self.model if model is None else model
        if model is None:
            return None
        unwrapped = self.accelerator.unwrap_model(model, keep_torch_compile=False)
        return unwrapped if isinstance(unwrapped, ModelAdaptersMixin) else None

    def _set_signature_columns_if_needed(self) -> None:
        """transformers' column filter, also keeping the base model's inputs.

        Overridden because ``AdapterModel.forward`` names only the common inputs and passes the rest
        (other base-model inputs, custom heads' label inputs) through ``**kwargs``: transformers
        would drop those columns from every batch (``remove_unused_columns=True``).
        """
        if self._signature_columns is not None:
            return
        super()._set_signature_columns_if_needed()
        model = self._adapter_model()
        if model is None:
            return
        params = inspect.signature(model.forward).parameters.values()
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return
        extra = list(inspect.signature(model.base_model.forward).parameters)
        for head in getattr(model, "heads", {}).values():
            extra += head.get_label_names()
        self._signature_columns += [c for c in dict.fromkeys(extra) if c not in self._signature_columns]

    # ---- optimizer -----------------------------------------------------------------------------
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """transformers' optimizer, after checking that the model is set up for adapter training.

        transformers 5.23's ``create_optimizer`` already takes only parameters with
        ``requires_grad`` and splits them into the standard decay / no-decay groups (biases and
        LayerNorm weights without decay), so that part is not re-implemented. The check runs here,
        before any optimizer exists, so a wrongly set-up model fails before torch complains about
        an empty parameter list.

        Raises:
            ValueError: as `check_adapter_training`.
        """
        if self.optimizer is None:
            adapter_model = self._adapter_model(model)
            if adapter_model is None:
                raise ValueError(f"AdapterTrainer needs a model with adapterkit adapters. {_USE_TRAINER}")
            check_adapter_training(adapter_model)
        return super().create_optimizer(model)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """transformers' weight-decay parameter names, without AdapterFusion value matrices.

        The fusion regularization pulls value matrices towards the identity; weight decay would pull
        them towards zero (AdapterHub means to exclude them too, but its pattern never matches).
        """
        names = super().get_decay_parameter_names(model)
        values = {id(p) for p in fusion_value_parameters(model)}
        excluded = {n for n, p in model.named_parameters() if id(p) in values}
        return [n for n in names if n not in excluded]

    # ---- loss ----------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """transformers' loss, plus the AdapterFusion value regularization when training a fusion.

        The regularization (``model.get_fusion_regularization_loss()``) is added in training mode
        only, when a ``Fuse`` of the active setup has trainable layers, and scaled so that each
        optimizer step counts it once under gradient accumulation. The logged training loss includes it.
        """
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        adapter_model = self._adapter_model(model)
        if not model.training or adapter_model is None or not trains_fusion(adapter_model):
            return result
        reg = adapter_model.get_fusion_regularization_loss()
        if reg is None:
            return result
        if self._loss_scaled_for_accumulation(num_items_in_batch):
            reg = reg / self.current_gradient_accumulation_steps  # the Trainer will not divide this loss
        if return_outputs:
            loss, outputs = result
            return loss + reg.to(loss.dtype), outputs
        return result + reg.to(result.dtype)

    def _loss_scaled_for_accumulation(self, num_items_in_batch: torch.Tensor | int | None) -> bool:
        """Whether ``training_step`` will leave the loss undivided by the accumulation steps (its own rule)."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is not None:
            return bool(scaled)
        return bool((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                    or self.compute_loss_func is not None)

    # ---- saving --------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the adapters, heads and other trainable parameters — not the full model.

        Overrides ``Trainer._save`` (which ``save_model`` and every checkpoint call) to write, into
        ``output_dir``: one sub-folder per adapter (`save_all_adapters`, each with the head of the
        same name), one sub-folder per head not named like an adapter, `EXTRA_TRAINABLE_NAME` when
        other parameters are trainable, the processing class and ``training_args.bin``. Models
        without the adapter mixin fall back to transformers' full save. ``state_dict`` (passed by
        transformers under DeepSpeed/FSDP) is not used: the weights are read from the model.
        """
        model = self._adapter_model()
        if model is None:
            super()._save(output_dir, state_dict=state_dict)
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        logger.info("Saving adapters to %s", output_dir)
        model.save_all_adapters(output_dir)
        for name in _trained_fusions(model):
            model.save_adapter_fusion(os.path.join(output_dir, name), name)
        for name in getattr(model, "heads", {}):
            if name not in model.adapters_config:
                save_head(model, os.path.join(output_dir, name), name)
        extras = _extra_trainable(model)
        if extras:
            save_file({k: v.detach().cpu().contiguous() for k, v in extras.items()},
                      os.path.join(output_dir, EXTRA_TRAINABLE_NAME), metadata={"format": "pt"})
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        elif getattr(self.data_collator, "tokenizer", None) is not None:
            self.data_collator.tokenizer.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    # ---- loading -------------------------------------------------------------------------------
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Reload the adapters and heads of a checkpoint written by `_save` (for ``resume_from_checkpoint``).

        Overrides ``Trainer._load_from_checkpoint``, which looks for full-model or PEFT weights.
        Weights are copied into the existing parameters, so trainability, the active setup and the
        parameter order the optimizer state in the checkpoint refers to are unchanged (see
        `load_adapter_checkpoint`). Models without the adapter mixin fall back to transformers.

        Raises:
            FileNotFoundError: if the checkpoint holds no adapter folder.
        """
        adapter_model = self._adapter_model(model)
        if adapter_model is None:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        logger.info("Loading adapters from %s", resume_from_checkpoint)
        load_adapter_checkpoint(adapter_model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """Reload the adapters and heads of ``state.best_model_checkpoint`` (``load_best_model_at_end``).

        Overrides ``Trainer._load_best_model``, which looks for full-model or PEFT weights. transformers'
        ``_issue_warnings_after_load`` is not needed: `load_adapter` raises on missing or unexpected
        keys. DeepSpeed/FSDP and models without the adapter mixin fall back to transformers.

        Raises:
            FileNotFoundError: if the best checkpoint holds no adapter folder.
        """
        adapter_model = self._adapter_model()
        if adapter_model is None or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            super()._load_best_model()
            return
        logger.info("Loading best adapters from %s (score: %s).", self.state.best_model_checkpoint,
                    self.state.best_metric)
        load_adapter_checkpoint(adapter_model, self.state.best_model_checkpoint)


class _AdapterTrainerCallback(TrainerCallback):
    """Re-checks the set-up when training begins (the model may have changed since the optimizer)."""

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       **kwargs: Any) -> None:
        if isinstance(model, ModelAdaptersMixin):
            check_adapter_training(model)


# ---- checks --------------------------------------------------------------------------------------
def _activate_and_check(model: nn.Module, adapter_names: Any) -> None:
    if not isinstance(model, ModelAdaptersMixin):
        raise ValueError(
            f"AdapterTrainer needs a model with adapterkit adapters, got {type(model).__name__}. Use "
            f"adapterkit.AutoAdapterModel or adapterkit.init(model), add an adapter and call "
            f"model.train_adapter(name). {_USE_TRAINER}"
        )
    if adapter_names is not None:
        model.set_active_adapters(adapter_names)
    if model.adapters_config.active_setup is None:
        raise ValueError(
            "the model has no active adapters, so AdapterTrainer has nothing to train: call "
            f"model.train_adapter(name) (or pass adapter_names=...). {_USE_TRAINER}"
        )


def check_adapter_training(model: ModelAdaptersMixin) -> None:
    """Check that ``model`` is set up to train adapters, from the parameters' actual ``requires_grad``.

    Passes when at least one parameter of an active adapter is trainable and the base model is
    frozen: no base-model parameter other than adapter weights and the input embeddings (which
    ``train_adapter(..., train_embeddings=True)`` unfreezes) requires grad — unless the model was
    frozen by ``train_adapter``/``freeze_model`` and some base parameters were unfrozen afterwards
    on purpose.

    Raises:
        ValueError: with no active adapters, no trainable active-adapter parameter, or an unfrozen
            base model; the message says to call ``model.train_adapter(...)`` or use
            `transformers.Trainer`.
    """
    setup = model.adapters_config.active_setup
    if setup is None:
        raise ValueError(
            "the model has no active adapters: call model.train_adapter(name) before training. "
            + _USE_TRAINER
        )
    active = sorted(setup.flatten())
    if not trains_fusion(model) and not any(
        p.requires_grad for name in active for p in model._adapter_parameters(name)
    ):
        raise ValueError(
            f"no parameter of the active adapters {active} is trainable: call "
            f"model.train_adapter({active[0]!r}) (or model.train_adapter_fusion(...) for a Fuse) before "
            f"training. {_USE_TRAINER}"
        )
    adapter_ids = {id(p) for p in _all_adapter_parameters(model)}
    adapter_ids |= {id(p) for layer in iter_fusion_layers(model.base_model) for p in layer.parameters()}
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    allowed = adapter_ids | {id(p) for p in (embeddings.parameters() if embeddings is not None else ())}
    trainable_base = [n for n, p in model.base_model.named_parameters()
                      if p.requires_grad and id(p) not in allowed]
    if trainable_base and not getattr(model, "model_frozen", False):
        shown = ", ".join(trainable_base[:3]) + (", ..." if len(trainable_base) > 3 else "")
        raise ValueError(
            f"the base model is not frozen ({len(trainable_base)} trainable base parameters, e.g. {shown}): "
            f"call model.train_adapter({active[0]!r}) to freeze it and train only the adapter. {_USE_TRAINER}"
        )


# ---- checkpoint contents -------------------------------------------------------------------------
def _active_head_names(model: nn.Module | None) -> list[str]:
    """The names in ``model.active_head`` (a name, a list, or a BatchSplit of names) that are heads."""
    heads = getattr(model, "heads", None)
    active = getattr(model, "active_head", None)
    if heads is None or active is None:
        return []
    names = [active] if isinstance(active, str) else list(active)
    return [n for n in names if isinstance(n, str) and n in heads]


def _active_label_names(model: nn.Module | None) -> list[str]:
    """The label inputs of the active head(s), in order, without repeats."""
    return list(dict.fromkeys(k for n in _active_head_names(model) for k in model.heads[n].get_label_names()))


def _all_adapter_parameters(model: ModelAdaptersMixin) -> Iterator[nn.Parameter]:
    for name in model.adapters_config:
        yield from model._adapter_parameters(name)


def trains_fusion(model: ModelAdaptersMixin) -> bool:
    """Whether a ``Fuse`` block of the active setup has a trainable fusion layer (AdapterFusion training)."""
    setup = model.adapters_config.active_setup
    if setup is None:
        return False
    return any(p.requires_grad for name in _fuse_names(setup) for p in model._fusion_parameters(name))


def _fuse_names(block: AdapterCompositionBlock) -> list[str]:
    names = [block.name] if isinstance(block, Fuse) else []
    for child in block:
        if isinstance(child, AdapterCompositionBlock):
            names += _fuse_names(child)
    return names


def _trained_fusions(model: ModelAdaptersMixin) -> list[str]:
    """The fusions with a trainable parameter (the ones a checkpoint must hold)."""
    return [n for n in model.adapters_config.fusions if any(p.requires_grad for p in model._fusion_parameters(n))]


def _extra_trainable(model: ModelAdaptersMixin) -> dict[str, torch.Tensor]:
    """Trainable parameters that neither the adapter, fusion nor head folders hold."""
    saved = {id(p) for p in _all_adapter_parameters(model)}
    saved |= {id(p) for layer in iter_fusion_layers(model.base_model) for p in layer.parameters()}
    heads = getattr(model, "heads", None)
    if heads is not None:
        saved |= {id(p) for p in heads.parameters()}
    return {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in saved}


def load_adapter_checkpoint(model: ModelAdaptersMixin, checkpoint: str | os.PathLike) -> None:
    """Load what `AdapterTrainer` saved in ``checkpoint`` into ``model``, keeping its training state.

    Every sub-folder with ``adapter_config.json`` is loaded as the adapter named like the folder
    (with its head); every sub-folder with ``adapter_fusion_config.json`` as the AdapterFusion it
    names; every other sub-folder with ``head_config.json`` as the head named like the folder;
    `EXTRA_TRAINABLE_NAME`, if present, into the parameters it names. Adapters the model
    already has are reloaded in the model's order. Afterwards each parameter that existed before is
    the same `torch.nn.Parameter` object again, now holding the checkpoint's values, so its
    ``requires_grad``, its device and an existing optimizer's references stay valid; parameters
    of adapters or heads the model did not have are frozen. The active setup, skipped layers and
    active head are restored.

    Args:
        model: a model with the adapter mixin.
        checkpoint: a folder written by `AdapterTrainer` (``checkpoint-<step>`` or ``output_dir``).

    Raises:
        FileNotFoundError: if the folder holds no adapter sub-folder.
        ValueError: if a folder's weights do not fit the model (from `load_adapter`).
    """
    checkpoint = os.fspath(checkpoint)
    subdirs = sorted(d for d in os.listdir(checkpoint) if os.path.isdir(os.path.join(checkpoint, d)))
    adapter_dirs = [d for d in subdirs if os.path.isfile(os.path.join(checkpoint, d, CONFIG_NAME))]
    fusion_dirs = [d for d in subdirs if os.path.isfile(os.path.join(checkpoint, d, FUSION_CONFIG_NAME))]
    head_dirs = [d for d in subdirs if d not in adapter_dirs
                 and os.path.isfile(os.path.join(checkpoint, d, HEAD_CONFIG_NAME))]
    if not adapter_dirs:
        raise FileNotFoundError(
            f"no adapter in checkpoint {checkpoint}: expected sub-folders with {CONFIG_NAME}, as "
            "AdapterTrainer writes them (transformers.Trainer checkpoints hold full model weights instead)"
        )
    setup, skip_layers = model.adapters_config.active_setup, model.adapters_config.skip_layers
    active_head = getattr(model, "active_head", None)
    before = dict(model.named_parameters())
    order = [n for n in model.adapters_config if n in adapter_dirs]
    order += [n for n in adapter_dirs if n not in order]
    quiet = _DropReloadWarning()
    io_logger = logging.getLogger("adapterkit.io.adapter_io")
    io_logger.addFilter(quiet)
    try:
        for name in order:
            model.load_adapter(os.path.join(checkpoint, name), load_as=name)
        for name in fusion_dirs:
            model.load_adapter_fusion(os.path.join(checkpoint, name), with_head=False)
        for name in head_dirs:
            path = os.path.join(checkpoint, name)
            if getattr(model, "heads", None) is None:
                logger.warning("skipping head folder %s: the model has no flexible heads", path)
                continue
            load_head(model, path, load_as=name)
    finally:
        io_logger.removeFilter(quiet)
        _restore_parameter_objects(model, before)
        model.set_active_adapters(setup, skip_layers=sorted(skip_layers) or None)
        if active_head is not None and all(  # a name, a list or a BatchSplit of names (None: identity)
            n is None or n in getattr(model, "heads", {})
            for n in ([active_head] if isinstance(active_head, str) else list(active_head))
        ):
            model.active_head = active_head
    extras_file = os.path.join(checkpoint, EXTRA_TRAINABLE_NAME)
    if os.path.isfile(extras_file):
        params = dict(model.named_parameters())
        extras = load_file(extras_file)
        unknown = sorted(set(extras) - set(params))
        if unknown:
            raise ValueError(f"{extras_file} names parameters this model does not have: {unknown[:5]}")
        with torch.no_grad():
            for key, tensor in extras.items():
                params[key].copy_(tensor.to(params[key].dtype))


class _DropReloadWarning(logging.Filter):
    """Hides `load_adapter`'s "overwriting existing adapter" warning: here reloading is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("overwriting existing adapter")


def _restore_parameter_objects(model: nn.Module, before: dict[str, nn.Parameter]) -> None:
    """Put the parameter objects of ``before`` back in place of freshly created ones of the same name.

    `load_adapter` and head loading build new modules; copying their values into the old parameter
    objects and re-registering those keeps ``requires_grad``, devices and optimizer references.
    New parameters without a predecessor are frozen.
    """
    for name, new in list(model.named_parameters()):
        old = before.get(name)
        if old is new:
            continue
        if old is None or old.shape != new.shape:
            new.requires_grad_(False if old is None else old.requires_grad)
            continue
        with torch.no_grad():
            old.copy_(new.to(device=old.device, dtype=old.dtype))
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        setattr(owner, leaf, old)


__all__ = ["EXTRA_TRAINABLE_NAME", "AdapterTrainer", "check_adapter_training", "load_adapter_checkpoint"]
