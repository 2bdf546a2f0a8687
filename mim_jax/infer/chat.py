"""A multi-turn chat with MIM (spec §4): the library under the CLI
(`python -m mim_jax.chat`) and any demo server.

    session = ChatSession(generator, output_dir="chat_images")
    reply = session.send("what is in <image>? draw me a similar one", ["cat.png"])
    reply.parts  # ["It is a cat on a sofa. Here is another:", Path("chat_images/image_0001.png"), ...]

The whole history (user and assistant turns, their images) is the prompt of
every turn, as in the original demo; generated images are saved and kept in
the history as assistant images with their descriptions as captions. Each
request is limited to 4 images and 650 words (the original demo's limits).
Problems a user can cause (missing or corrupt image, over a limit, a prompt
that no longer fits) raise `ChatError` with a message that says what to do,
and leave the history unchanged.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import jax
from PIL import Image

from mim_jax.data.conversation import IMAGE_PLACEHOLDER, Conversation, ConversationError, Turn
from mim_jax.data.images import BadImageError, load_image
from mim_jax.infer.mim_generate import GeneratedTurn, MIMGenerator, PromptError

MAX_IMAGES_PER_REQUEST = 4
MAX_WORDS_PER_REQUEST = 650


class ChatError(ValueError):
  """A request the session refused; the message is meant for the user."""


@dataclasses.dataclass
class ChatReply:
  parts: list  # str and Path (a saved image), in order
  turn: GeneratedTurn


def count_words(content: str) -> int:
  return len(content.replace(IMAGE_PLACEHOLDER, " ").split())


class ChatSession:
  def __init__(self, generator: MIMGenerator, output_dir: str | os.PathLike, *,
               max_images: int = MAX_IMAGES_PER_REQUEST, max_words: int = MAX_WORDS_PER_REQUEST, seed: int = 0):
    self.generator = generator
    self.rng = jax.random.key(seed)
    self.output_dir = Path(output_dir)
    self.max_images, self.max_words = max_images, max_words
    self.turns: list[Turn] = []
    self.images: list[Image.Image] = []  # every image of the history, in order of appearance
    self._saved = 0

  def reset(self) -> None:
    self.turns, self.images = [], []

  def send(self, content: str, image_paths: Sequence[str | os.PathLike] = ()) -> ChatReply:
    """One user message (`<image>` marks where each of `image_paths` goes) → the reply."""
    paths = [str(path) for path in image_paths]
    self._check_limits(content, paths)
    new_images = [self._load(path) for path in paths]
    try:
      user = Turn("user", content, tuple(paths))
      conversation = Conversation((*self.turns, user), name="chat")
      rng = jax.random.fold_in(self.rng, len(self.turns))  # a fresh draw per turn when sampling
      [turn] = self.generator.generate([conversation], [self.images + new_images], rng)
    except (ConversationError, PromptError) as error:
      raise ChatError(f"{error}; /reset starts a new conversation") from error
    saved = [self._save(image.image) for image in turn.images]
    self.turns += [user, turn.to_turn([str(path) for path in saved])]
    self.images += new_images + [image.image for image in turn.images]
    saved_iter = iter(saved)
    parts = [part if isinstance(part, str) else next(saved_iter) for part in turn.parts]
    return ChatReply(parts, turn)

  def _check_limits(self, content: str, paths: list[str]) -> None:
    if len(paths) > self.max_images:
      raise ChatError(f"the message has {len(paths)} images; at most {self.max_images} are allowed per message")
    words = count_words(content)
    if words > self.max_words:
      raise ChatError(f"the message has {words} words; at most {self.max_words} are allowed per message")
    placeholders = content.count(IMAGE_PLACEHOLDER)
    if placeholders != len(paths):
      raise ChatError(f"the message has {placeholders} {IMAGE_PLACEHOLDER} markers but {len(paths)} images; "
                      "give one image per marker")

  def _load(self, path: str) -> Image.Image:
    try:
      return load_image(path)
    except FileNotFoundError as error:
      raise ChatError(f"{error}; check the path") from error
    except BadImageError as error:
      raise ChatError(str(error)) from error

  def _save(self, image: Image.Image) -> Path:
    """The next free `image_NNNN.png`: never overwrites an earlier session's images."""
    self.output_dir.mkdir(parents=True, exist_ok=True)
    while True:
      self._saved += 1
      path = self.output_dir / f"image_{self._saved:04d}.png"
      if not path.exists():
        image.save(path)
        return path
