"""`PromptTuningConfig`: prompt tuning (Lester et al., 2021, https://arxiv.org/abs/2104.08691)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .base import AdapterConfig, check_choice, check_type

_PROMPT_INITS = ("random_uniform", "from_string")
_COMBINES = ("prefix", "prefix_after_bos")


@dataclass(eq=False)
class PromptTuningConfig(AdapterConfig):
    """Prompt tuning: ``prompt_length`` learned vectors inserted into the embedding output.

    Keys and defaults are AdapterHub's (reference inventory, section 1.8); ``random_uniform_scale`` is a saved
    field here (a class attribute in AdapterHub).

    Args:
        prompt_length: number of prompt vectors ``P``; the sequence the layers see grows by ``P``.
        prompt_init: ``"random_uniform"`` (uniform in ``[-random_uniform_scale, random_uniform_scale]``) or
            ``"from_string"``: the input embeddings of ``prompt_init_text``'s tokens, repeated or cut to ``P``.
        prompt_init_text: the text for ``"from_string"``.
        random_uniform_scale: range of the uniform initialisation.
        combine: ``"prefix"``: ``[P; X]``; ``"prefix_after_bos"``: ``[x_0; P; x_1 ...]``.
        init_weights_seed: seed the initialisation, so adapters with the same seed start identical.

    Raises:
        ValueError: for a value outside what a key allows, naming the key and the allowed values.
    """

    prompt_length: int = 10
    prompt_init: str = "random_uniform"
    prompt_init_text: str | None = None
    random_uniform_scale: float = 0.5
    combine: str = "prefix"
    init_weights_seed: int | None = None

    architecture: ClassVar[str | None] = "prompt_tuning"
    method: ClassVar[str] = "prompt_tuning"

    def validate(self) -> None:
        """Check every key; see the class docstring for the rules."""
        name = type(self).__name__
        check_type(self, "prompt_length", (int,), "a positive integer")
        if self.prompt_length < 1:
            raise ValueError(f"{name}.prompt_length={self.prompt_length!r} is not allowed; expected a positive integer")
        check_choice(self, "prompt_init", _PROMPT_INITS)
        check_choice(self, "combine", _COMBINES)
        if self.prompt_init == "from_string" and not (isinstance(self.prompt_init_text, str) and self.prompt_init_text):
            raise ValueError(
                f"{name}.prompt_init_text={self.prompt_init_text!r} is not allowed with prompt_init='from_string'; "
                "give the text whose token embeddings start the prompt"
            )
        if self.prompt_init_text is not None and not isinstance(self.prompt_init_text, str):
            raise ValueError(f"{name}.prompt_init_text={self.prompt_init_text!r} is not allowed; expected a string")
        check_type(self, "random_uniform_scale", (int, float), "a positive number")
        if self.random_uniform_scale <= 0:
            raise ValueError(
                f"{name}.random_uniform_scale={self.random_uniform_scale!r} is not allowed; expected a positive number"
            )
        if self.init_weights_seed is not None:
            check_type(self, "init_weights_seed", (int,), "an integer or None")

    def to_dict(self) -> dict[str, Any]:
        """The saved form; ``"architecture": "prompt_tuning"`` comes first, as AdapterHub writes it."""
        return {"architecture": self.architecture, **super().to_dict()}
