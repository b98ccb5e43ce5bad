"""Tiny random configs (hidden 32, 2 layers) per model family; each module exports ``CONFIGS``
(model type -> config factory) and ``INPUTS`` (model type -> input factory, for models whose inputs are
not ``input_ids`` + ``attention_mask``), and optionally ``MODELS`` (model type -> ``f(config) -> model`` for
models that are not built with ``AutoAdapterModel.from_config``). `tiny` merges them."""
