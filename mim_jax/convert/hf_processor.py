"""What transformers users load beside a MIM export: the processor files and a
chat template that gives `data/features.py`'s prompt ids.

transformers 5's `Blip2Processor` does not place image tokens at a marker: with
`num_query_tokens` = N it prepends N `<image>` ids once per text, before BOS,
however many images there are (BLIP-2's OPT/T5 layout), and leaves every
`<image>` in the text as the single id it tokenizes to. MIM's prompt has each
image's N ids in place, inside its turn. So the export writes
`num_query_tokens` 0 (the processor adds nothing) and the chat template writes
N `<image>` per image where the image is; `Blip2ForConditionalGeneration`
then fills them in order (masked_scatter), as our model does. (With N there,
a templated prompt would carry 2N image ids for one image and torch's
masked_scatter raises.) `Blip2Processor.__init__` does not pass the chat
template it loads on, so `processor.apply_chat_template` has none: the prompt
comes from `processor.tokenizer.apply_chat_template`.

The template is Llama-2 chat without a system prompt, piece by piece as
`build_features` tokenizes it: content is split at `<image>`, pieces are
stripped, empty pieces vanish, `[INST]`/`[/INST]` join their piece with one
space. Text right after a special token (`<s>`, `<image>`) gets the
tokenizer's leading-space marker only under some tokenizer settings (Llama's
`legacy`), so the export probes the tokenizer, as saved and loaded again, for
the separator that makes the whole-string ids equal the piecewise ones, and
checks the result on a probe conversation.
"""
from __future__ import annotations

import json
from pathlib import Path

from mim_jax.data.conversation import IMAGE_PLACEHOLDER, Conversation, Turn
from mim_jax.data.features import FeatureConfig, build_features
from mim_jax.data.images import CLIP_MEAN, CLIP_STD
from mim_jax.data.tokenizer import Tokenizer

CHAT_TEMPLATE_FILE = "chat_template.jinja"

# Jinja, rendered by transformers' sandbox. `content` is a string with <image>
# markers (our conversations) or a list of {"type": "text"|"image"} parts (the
# processor's messages). @N@ and @SEP@ are filled in at export.
_TEMPLATE = """\
{%- for message in messages -%}
{%- if message['role'] != ['user', 'assistant'][loop.index0 % 2] -%}
{{- raise_exception('MIM chat: messages must alternate user/assistant starting with user, with no system prompt; '
    ~ 'message ' ~ loop.index0 ~ ' has role ' ~ message['role']) -}}
{%- endif -%}
{%- set text = namespace(value='') -%}
{%- if message['content'] is string -%}
{%- set text.value = message['content'] -%}
{%- else -%}
{%- for part in message['content'] -%}
{%- if part['type'] == 'image' -%}{%- set text.value = text.value ~ '<image>' -%}
{%- elif part['type'] == 'text' -%}{%- set text.value = text.value ~ part['text'] -%}{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- set pieces = text.value.split('<image>') -%}
{%- set user = message['role'] == 'user' -%}
{%- if user -%}{{- bos_token -}}{%- endif -%}
{%- for raw in pieces -%}
{%- set piece = namespace(value=raw.strip()) -%}
{%- if user and loop.first -%}{%- set piece.value = ('[INST] ' ~ piece.value) if piece.value else '[INST]' -%}{%- endif -%}
{%- if user and loop.last -%}{%- set piece.value = (piece.value ~ ' [/INST]') if piece.value else '[/INST]' -%}{%- endif -%}
{%- if not loop.first -%}{{- '<image>' * @N@ -}}{%- endif -%}
{%- if piece.value -%}{{- (' ' if not user and loop.first else @SEP@) ~ piece.value -}}{%- endif -%}
{%- endfor -%}
{%- if not user -%}{{- eos_token -}}{%- endif -%}
{%- endfor -%}
"""

_PROBE = Conversation((
    Turn("user", "look <image> and<image>", ("a.png", "b.png")),
    Turn("assistant", "<image> here it is <image>", ("c.png", "d.png"), ("one", "two")),
    Turn("user", "again"),
    Turn("assistant", "done"),
    Turn("user", "<image> last", ("e.png",)),
), name="the chat template's probe conversation")


def chat_template(tokenizer: Tokenizer, num_image_tokens: int) -> str:
  """MIM's prompt as a Jinja chat template for `tokenizer`; raises if its ids
  would differ from `build_features`'."""
  after_special = [tokenizer.image_id, *tokenizer.encode("x")]
  for separator in ("", " "):
    if tokenizer.hf(f"{IMAGE_PLACEHOLDER}{separator}x", add_special_tokens=False)["input_ids"] == after_special:
      break
  else:
    raise ValueError(f"{tokenizer.source}: text after a special token tokenizes differently from text on its own, "
                     "with or without a space, so no chat template can give build_features' ids; export with a "
                     "Llama (sentencepiece) tokenizer")
  template = _TEMPLATE.replace("@N@", str(num_image_tokens)).replace("@SEP@", json.dumps(separator))
  _check(template, tokenizer, num_image_tokens)
  return template


def _check(template: str, tokenizer: Tokenizer, num_image_tokens: int) -> None:
  messages = [{"role": turn.role, "content": turn.content} for turn in _PROBE.turns]
  got = tokenizer.hf.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=False)
  features = build_features(_PROBE, tokenizer, FeatureConfig(
      max_len=4096, max_images=len(_PROBE.images), num_image_tokens=num_image_tokens, caption_branches=False))
  expected = features.tokens[:features.main_length].tolist()
  if list(got) != expected:
    raise ValueError(f"{tokenizer.source}: the chat template's ids differ from build_features' on "
                     f"{_PROBE.name} ({len(got)} vs {len(expected)} ids); this tokenizer splits text around "
                     "special tokens in a way the template does not model, so the export would mislead "
                     "transformers users; export with a Llama (sentencepiece) tokenizer")


def write_processor_files(directory: Path, template: str, *, image_size: int) -> None:
  """preprocessor_config.json (BLIP-2's image processor at our size and CLIP
  normalisation, as data/images.py), processor_config.json and `template`."""
  image_processor = {
      "image_processor_type": "BlipImageProcessor", "processor_class": "Blip2Processor",
      "do_convert_rgb": True, "do_resize": True, "size": {"height": image_size, "width": image_size},
      "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
      "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
  }
  (directory / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=2))
  # 0, not N: the chat template already writes the N ids in place (see the module docstring).
  processor = {"processor_class": "Blip2Processor", "num_query_tokens": 0}
  (directory / "processor_config.json").write_text(json.dumps(processor, indent=2))
  (directory / CHAT_TEMPLATE_FILE).write_text(template)
