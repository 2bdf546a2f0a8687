"""MIM generation of one assistant turn per conversation: interleaved text and
images (spec §2, §4), on top of the compiled pieces in `mim_decode`.

    generator = MIMGenerator(config, params, tokenizer, PlaceholderRenderer())
    turn = generator.generate([conversation])[0]   # conversation ends with a user turn
    turn.parts  # ["Here it is:", GeneratedImage(image, "a red bus"), "Anything else?"]

The prompt goes through `build_features` (no caption branches), the same path
training takes, so `<image>` runs, positions and the chat template match.

Batches (evaluation): rows decode together; when any row finishes a
description, all rows pause at a render barrier; the rows that are READY then
render in one renderer call and are prefilled with their images in one
compiled call, while the other rows keep their state (pending logits,
position, an open description) and resume in the next segment. A row that is
done idles until all are. Batched results equal row-by-row results (tested):
every row sees only its own valid cache slots.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from PIL import Image

from mim_jax.data.conversation import IMAGE_PLACEHOLDER, Conversation, Turn
from mim_jax.data.features import FeatureConfig, build_features
from mim_jax.data.images import load_image, preprocess_image
from mim_jax.infer import mim_decode
from mim_jax.infer.generate import SamplingConfig
from mim_jax.infer.mim_decode import READY, ControlIds, TurnLimits
from mim_jax.infer.renderers import check_rendered
from mim_jax.models.mim import MIMConfig, pack_images


class PromptError(ValueError):
  """A conversation that cannot be used as a generation prompt."""


@dataclasses.dataclass(frozen=True)
class GeneratedImage:
  image: Image.Image
  description: str  # the SD prompt; empty for the qformer medium


@dataclasses.dataclass
class GeneratedTurn:
  parts: list  # str and GeneratedImage, in order
  token_ids: list[int]  # everything sampled, descriptions and control tokens included
  finish_reason: str  # "stop" (a stop token) or "length" (max_new_tokens)

  @property
  def images(self) -> list[GeneratedImage]:
    return [part for part in self.parts if isinstance(part, GeneratedImage)]

  @property
  def text(self) -> str:
    """Visible text, each image collapsed to one `<image>` marker (spec §4)."""
    return " ".join(part if isinstance(part, str) else IMAGE_PLACEHOLDER for part in self.parts)

  def to_turn(self, image_files: Sequence[str]) -> Turn:
    """The assistant turn for the conversation history, given where its images were saved."""
    if len(image_files) != len(self.images):
      raise ValueError(f"the turn has {len(self.images)} images but {len(image_files)} files were given")
    return Turn("assistant", self.text, tuple(image_files), tuple(image.description for image in self.images))


class MIMGenerator:
  """Generates assistant turns. `renderer` is a TextRenderer for the language
  medium and an EmbeddingRenderer for the qformer medium (infer/renderers.py).

  Shapes are bucketed (prompt width to a multiple of `length_bucket`, input
  images to a multiple of `image_bucket`) so a chat does not recompile every turn.
  """

  def __init__(self, config: MIMConfig, params, tokenizer, renderer, *, sampling: SamplingConfig | None = None,
               limits: TurnLimits = TurnLimits(), max_prompt_len: int = 2048, length_bucket: int = 64,
               image_bucket: int = 4):
    self.config, self.params, self.tokenizer, self.renderer = config, params, tokenizer, renderer
    self.sampling = sampling or SamplingConfig(stop_ids=(tokenizer.eos_id,))
    self.limits = limits
    self.ids = ControlIds.from_tokenizer(tokenizer)
    self.max_prompt_len, self.length_bucket, self.image_bucket = max_prompt_len, length_bucket, image_bucket

  def generate(self, conversations: Sequence[Conversation], images: Sequence[Sequence[Image.Image]] | None = None,
               rng: jax.Array | None = None) -> list[GeneratedTurn]:
    """The next assistant turn of each conversation (each must end with a user
    turn). `images[b]` are conversation b's images in order of appearance;
    by default they are loaded from the turns' image_list paths."""
    return self.run(conversations, images, rng)[0]

  def run(self, conversations: Sequence[Conversation], images: Sequence[Sequence[Image.Image]] | None = None,
          rng: jax.Array | None = None) -> tuple[list[GeneratedTurn], mim_decode.DecodeState]:
    """`generate`, also returning the final decode state (its KV cache)."""
    if images is None:
      images = [[load_image(path) for path in conversation.images] for conversation in conversations]
    arrays = self.prompt_arrays(conversations, images)
    width = arrays["tokens"].shape[1]
    state = mim_decode.prefill(
        self.params, *(arrays[name] for name in ("tokens", "positions", "valid", "image_starts", "image_rows",
                                                 "pixels")),
        jax.random.key(0) if rng is None else rng, self.limits.max_images,
        self.limits.max_description_tokens, config=self.config, sampling=self.sampling,
        cache_slots=mim_decode.cache_length(width, self.config, self.sampling, self.limits, self.length_bucket))
    rendered: list[list[GeneratedImage]] = [[] for _ in conversations]
    while True:
      state = mim_decode.decode_segment(self.params, state, config=self.config, ids=self.ids, sampling=self.sampling)
      phase_b = np.asarray(state.phase_b)
      ready_rows = np.flatnonzero(phase_b == READY)
      if not len(ready_rows):
        if (phase_b <= mim_decode.DESCRIBING).any():
          raise RuntimeError("the KV cache filled up before generation finished; cache_length's bound is wrong")
        break
      new_images = self._render(state, ready_rows)
      size = self.config.vision.image_size
      pixels_bhwc = np.zeros((len(conversations), size, size, 3), np.float32)
      for row, generated in zip(ready_rows, new_images):
        pixels_bhwc[row] = preprocess_image(generated.image, size)
        rendered[row].append(generated)
      state = mim_decode.insert_images(self.params, state, pixels_bhwc, config=self.config, sampling=self.sampling)
    tokens_bn, count_b = np.asarray(state.tokens_bn), np.asarray(state.count_b)
    turns = [self._turn(tokens_bn[row, :count_b[row]].tolist(), rendered[row]) for row in range(len(conversations))]
    return turns, state

  def _render(self, state, ready_rows: np.ndarray) -> list[GeneratedImage]:
    if self.config.medium.kind == "qformer":
      cond_bld = np.asarray(mim_decode.medium_conditioning(self.params, state, config=self.config))[ready_rows]
      images = check_rendered(self.renderer(cond_bld), len(ready_rows), "conditioning sequences")
      return [GeneratedImage(image, "") for image in images]
    tokens_bn, count_b = np.asarray(state.tokens_bn), np.asarray(state.count_b)
    descriptions = []
    for row in ready_rows:
      sampled = tokens_bn[row, :count_b[row]].tolist()
      opened = len(sampled) - 1 - sampled[::-1].index(self.ids.start)
      descriptions.append(self.tokenizer.decode(sampled[opened + 1:-1], skip_special_tokens=True).strip())
    images = check_rendered(self.renderer(descriptions), len(ready_rows), "descriptions")
    return [GeneratedImage(image, description) for image, description in zip(images, descriptions)]

  def _turn(self, sampled: list[int], images: list[GeneratedImage]) -> GeneratedTurn:
    """Splits the sampled ids at each `<start>[ … <end>]`, taking images in order;
    a description cut off by the token budget is dropped."""
    stops = set(self.sampling.stop_ids)
    finish_reason = "stop" if sampled and sampled[-1] in stops else "length"
    body = sampled[:-1] if finish_reason == "stop" else sampled
    parts, text, pending = [], [], iter(images)
    index = 0
    while index < len(body):
      token = body[index]
      index += 1
      if token != self.ids.start:
        text.append(token)
        continue
      if self.config.medium.kind == "language":
        if self.ids.end not in body[index:]:
          break
        index = body.index(self.ids.end, index) + 1
      self._flush(parts, text)
      parts.append(next(pending))
    self._flush(parts, text)
    return GeneratedTurn(parts, sampled, finish_reason)

  def _flush(self, parts: list, text: list[int]) -> None:
    piece = self.tokenizer.decode(text, skip_special_tokens=True).strip()
    if piece:
      parts.append(piece)
    text.clear()

  def prompt_arrays(self, conversations: Sequence[Conversation], images) -> dict[str, np.ndarray]:
    """Left-padded prompt arrays for the batch, through `build_features`."""
    if not conversations or len(images) != len(conversations):
      raise ValueError(f"need one image list per conversation, got {len(images)} for {len(conversations)}")
    k = self.config.num_image_tokens
    rows = []
    for conversation, row_images in zip(conversations, images):
      if conversation.turns[-1].role != "user":
        raise PromptError(f"{conversation.name}: the last turn is the assistant's; a prompt ends with a user turn")
      if len(row_images) != len(conversation.images):
        raise PromptError(f"{conversation.name}: has {len(conversation.images)} <image> placeholders but "
                          f"{len(row_images)} images were given")
      features = build_features(conversation, self.tokenizer, FeatureConfig(
          max_len=self.max_prompt_len, max_images=max(len(row_images), 1), num_image_tokens=k,
          caption_branches=False, pad_id=self.sampling.pad_id))
      if features.stats["main_tokens_truncated"]:
        raise PromptError(
            f"{conversation.name}: the prompt is longer than max_prompt_len={self.max_prompt_len} tokens "
            f"({features.stats['main_tokens_truncated']} over); shorten the history or raise max_prompt_len")
      rows.append(features)
    b = len(rows)
    width = self.length_bucket * math.ceil(max(f.main_length for f in rows) / self.length_bucket)
    slots = self.image_bucket * math.ceil(max(len(f.image_valid) for f in rows) / self.image_bucket)
    out = {"tokens": np.full((b, width), self.sampling.pad_id, np.int32), "positions": np.zeros((b, width), np.int32),
           "valid": np.zeros((b, width), bool), "image_starts": np.zeros((b, slots), np.int32)}
    image_valid = np.zeros((b, slots), bool)
    for row, f in enumerate(rows):
      shift = width - f.main_length
      out["tokens"][row, shift:] = f.tokens[:f.main_length]
      out["positions"][row, shift:] = f.positions[:f.main_length]
      out["valid"][row, shift:] = True
      m = len(f.image_valid)
      out["image_starts"][row, :m] = np.where(f.image_valid, f.image_starts + shift, 0)
      image_valid[row, :m] = f.image_valid
    count = int(image_valid.sum())
    out["image_rows"], _ = pack_images(image_valid, self.image_bucket * math.ceil(count / self.image_bucket))
    size = self.config.vision.image_size
    out["pixels"] = np.zeros((self.image_bucket * math.ceil(count / self.image_bucket), size, size, 3), np.float32)
    packed = [image for row_images in images for image in row_images]
    for index, image in enumerate(packed):
      out["pixels"][index] = preprocess_image(image, size)
    return out
