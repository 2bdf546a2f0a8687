"""How one generation request ends: a cleaned `Conversation`, or a
`Rejection` that says why (an LLM failure or the cleaning rule it broke).

Reasons are short keys that batch reports count: LLM failures start with
`llm_` (see mim_jax/llm/client.py), cleaning rules are the keys of clean.RULES.
"""
from __future__ import annotations

import dataclasses

from mim_jax.data.conversation import Conversation

ImageRef = tuple[str, str, str]  # (file, caption, url); url may be ""


@dataclasses.dataclass(frozen=True)
class Rejection:
  reason: str
  detail: str = ""
  text: str = ""  # the generated text, kept so rejected conversations can be inspected


@dataclasses.dataclass(frozen=True)
class GenerationOutcome:
  """Exactly one per request. `text` is the raw reply ("" when the LLM
  failed); `example_ids` are the in-context examples the prompt used."""

  id: str
  result: Conversation | Rejection
  text: str = ""
  example_ids: tuple[str, ...] = ()
  finish_reason: str = ""
  attempts: int = 0

  @property
  def kept(self) -> bool:
    return isinstance(self.result, Conversation)

