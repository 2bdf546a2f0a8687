"""The TFDS record schema round-trips conversations and image bytes exactly."""
import io

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from mim_jax.data import schema
from mim_jax.data.conversation import Conversation, Turn


def _encoded(fmt: str, color: str) -> bytes:
  buffer = io.BytesIO()
  Image.new("RGB", (8, 6), color).save(buffer, fmt)
  return buffer.getvalue()


def test_conversation_record_round_trips_text_and_bytes():
  conversation = Conversation((
      Turn("user", "hi <image>", image_list=("a.png",), extra={"lang": "en"}),
      Turn("assistant", "see <image> and <image>", image_list=("b.jpg", "a.png"), caption_list=("cap b", "cap a")),
  ), name="x1", extra={"id": 7})
  images = {"a.png": _encoded("PNG", "blue"), "b.jpg": _encoded("JPEG", "red")}
  record = schema.conversation_record(conversation, images, id="x1", source="unit")
  features = schema.conversation_features()
  parsed = features.deserialize_example(features.serialize_example(record),
                                        decoders={"images": tfds.decode.SkipDecoding()})
  parsed = tf.nest.map_structure(lambda t: t.numpy(), parsed)
  back, back_images = schema.conversation_from_record(parsed)
  assert back == conversation
  assert back_images == images  # the source's own bytes: JPEG stays JPEG
  assert list(record["image_names"]) == ["a.png", "b.jpg"]  # each file once, first appearance order


def test_missing_image_bytes_name_the_file():
  conversation = Conversation((Turn("user", "<image>", image_list=("gone.png",)),))
  with pytest.raises(KeyError, match="gone.png"):
    schema.conversation_record(conversation, {}, id="x", source="unit")


def test_unknown_kind():
  with pytest.raises(ValueError, match="kinds: conversation, caption"):
    schema.features_for("video")
