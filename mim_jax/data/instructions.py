"""Stage-1 (alignment) samples: one image, one caption instruction, the caption.

Spec §3: stage 1 trains on image–caption pairs written as a single turn with
one of 20 caption instructions, the image placed before or after the text.
The wording below is ours. The image sits in the USER turn, so it is an input:
there is no caption branch, and the loss falls on the assistant's reply — the
caption — and its `</s>`.
"""
from __future__ import annotations

import random

from mim_jax.data.conversation import IMAGE_PLACEHOLDER, Conversation, Turn

CAPTION_INSTRUCTIONS = (
    "Describe this image briefly.",
    "Write a short caption for this picture.",
    "What does this image show? Answer in one sentence.",
    "Summarize the content of this photo in a few words.",
    "Give a concise description of what you see.",
    "Caption this image.",
    "Tell me in one line what is in this picture.",
    "Provide a brief caption that fits this photo.",
    "In a sentence, what is depicted here?",
    "Write one sentence describing the scene.",
    "What is this a picture of? Keep it short.",
    "Describe the main content of this image concisely.",
    "Give this photo a short, accurate caption.",
    "Briefly explain what the image contains.",
    "Sum up this picture in a single sentence.",
    "How would you caption this image?",
    "State briefly what is shown in the photo.",
    "Write a compact description of this picture.",
    "Offer a one-sentence summary of the image.",
    "Say in a few words what this image is about.",
)


def caption_sample(image: str, caption: str, rng: random.Random, url: str | None = None,
                   name: str = "caption sample") -> Conversation:
  """A single-turn conversation: user = a random instruction with the image
  before or after it (both drawn from `rng`, so a seeded rng reproduces the
  sample), assistant = the caption."""
  instruction = rng.choice(CAPTION_INSTRUCTIONS)
  if rng.random() < 0.5:
    content = f"{IMAGE_PLACEHOLDER} {instruction}"
  else:
    content = f"{instruction} {IMAGE_PLACEHOLDER}"
  user = Turn("user", content, image_list=(image,), caption_list=(caption,), url_list=(url,) if url else ())
  return Conversation((user, Turn("assistant", caption)), name=name)
