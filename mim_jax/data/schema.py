"""The on-disk record formats: one TFDS feature schema per kind of example.

data_gen writes these, the stage-2 / stage-1 converters write these, and the
input pipeline reads them; this module is the only place they are defined.

- CONVERSATION_FEATURES: one TextBind-style conversation (TextBind itself and
  every stage-2 source after conversion). `conversation` is the released JSON
  of that one record (`{"conversation": [turn…], …}`, see conversation.py), so
  unknown keys survive; its `image_list` entries are the names in
  `image_names`, whose encoded bytes are `images` in the same order.
- CAPTION_FEATURES: one image–caption pair (stage 1). The instruction is drawn
  at read time, so every epoch sees a fresh one.

Images are stored encoded (PNG from data_gen, the source's own bytes from
converters) and decoded by the pipeline, never by TFDS, so the exact bytes
round-trip.
"""
from __future__ import annotations

import json

import tensorflow_datasets as tfds

from mim_jax.data.conversation import Conversation, conversation_from_json, conversation_to_json

KINDS = ("conversation", "caption")


def conversation_features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(),
      "source": tfds.features.Text(),
      "conversation": tfds.features.Text(),
      "image_names": tfds.features.Sequence(tfds.features.Text()),
      "images": tfds.features.Sequence(tfds.features.Image(encoding_format="png")),
  })


def caption_features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(),
      "source": tfds.features.Text(),
      "caption": tfds.features.Text(),
      "image": tfds.features.Image(encoding_format="png"),
  })


def features_for(kind: str) -> tfds.features.FeaturesDict:
  if kind not in KINDS:
    raise ValueError(f"unknown record kind {kind!r}; kinds: {', '.join(KINDS)}")
  return conversation_features() if kind == "conversation" else caption_features()


def conversation_record(conversation: Conversation, images: dict[str, bytes], *, id: str,
                        source: str) -> dict:
  """A CONVERSATION_FEATURES example. `images` maps each file named in the
  conversation to its encoded bytes; every named file must be present."""
  names = list(dict.fromkeys(conversation.images))
  missing = [name for name in names if name not in images]
  if missing:
    raise KeyError(f"{conversation.name}: no image bytes for {missing[:3]}; pass the encoded bytes of every file "
                   f"the conversation names")
  return {"id": id, "source": source, "conversation": json.dumps(conversation_to_json(conversation),
                                                                 ensure_ascii=False),
          "image_names": names, "images": [images[name] for name in names]}


def conversation_from_record(record: dict) -> tuple[Conversation, dict[str, bytes]]:
  """The inverse of `conversation_record` for a decoded-to-numpy example
  (bytes or str fields): the conversation and its name → bytes map."""
  text = _text(record["conversation"])
  name = _text(record["id"])
  conversation = conversation_from_json(json.loads(text), name=name)
  names = [_text(n) for n in record["image_names"]]
  return conversation, dict(zip(names, (bytes(b) for b in record["images"])))


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
