"""`make_client(config)`: the LLM client an LLMConfig names.

    client = make_client({"backend": "template"})   # LLMConfig or a mapping of its fields
    async with client:
      reply = await client.complete(LLMRequest(id, prompt, captions))

"openai" is mim_jax.llm's OpenAI-compatible client; "template" is data_gen's
offline stand-in (template.py). The interface both keep is mim_jax/llm/client.py.
"""
from __future__ import annotations

from typing import Any, Mapping

from mim_jax.llm.client import LLMClient, LLMConfig


def make_client(config: LLMConfig | Mapping[str, Any]) -> LLMClient:
  if not isinstance(config, LLMConfig):
    config = LLMConfig.from_mapping(dict(config))
  # Imported here: only the chosen backend should pay for its imports (aiohttp).
  if config.backend == "template":
    from data_gen.llm.template import TemplateClient
    return TemplateClient(config)
  from mim_jax.llm.openai_client import OpenAIChatClient
  return OpenAIChatClient(config)
