"""Backend "template": NOT a language model.

It writes a dialogue by filling fixed sentence templates with the request's
captions, choosing among a few phrasings with an rng seeded by the request
id (so a run is reproducible). The dialogues have the generator's format
(`Human:` / `Assistant:` lines, `<imgX> caption </imgX>` tags with the
captions copied unchanged, images shown once, 4–5 turns; it uses the first
three images, as the sampler draws 2 or 3) and pass cleaning,
which is all they are for: running the pipeline end to end offline (CI,
smoke runs, benchmarks of everything but the model). They carry no world
knowledge and no real reasoning about the images; never train on them.

It keeps to `requests_per_minute` like the real client (tokens cost it
nothing), so a smoke run can pace itself as a run against an API quota
would, shared state file included.
"""
from __future__ import annotations

import random

from data_gen.dialogue import ASSISTANT, HUMAN, image_tag
from mim_jax.llm.client import Completion, LLMConfig, LLMFailure, LLMRequest
from mim_jax.llm.rate_limit import RateLimiter

OPENERS = ("I came across this picture today.", "Take a look at this photo I took.",
           "A friend just sent me this.", "I found this in an old album.")
FIRST_QUESTIONS = ("What do you make of it?", "What stands out to you here?",
                   "Could you tell me what is going on?", "Is there anything interesting about it?")
FIRST_ANSWERS = ("The first image shows {caption}. Scenes like this often say a lot about the place and the moment.",
                 "In the first image I can see {caption}. It is the kind of moment people like to remember.",
                 "It shows {caption}. The setting makes it feel calm and ordinary in a nice way.")
SHOW_REQUESTS = ("Can you show me something that would go well with it?", "Do you have a picture that relates to it?",
                 "Could you share another image on a similar theme?")
SHOWS = ("Here is one that fits: {tag} Both pictures share a certain everyday feel.",
         "Sure, this one comes to mind: {tag} It makes a nice companion to the first image.",
         "How about this? {tag} Put side by side, the two tell a small story.")
COMPARE_REQUESTS = ("And here is another one: {tag} How does it compare with the first image?",
                    "I also have this: {tag} Do you see a connection with the first image?")
COMPARE_ANSWERS = ("The second image shows {caption}, while the first one shows {first}. "
                   "Together they suggest a theme; to add one more, here is a picture that fits: {tag}",
                   "Compared with the first image, this one is about {caption}. "
                   "A third picture that continues the thread: {tag}")
CLOSINGS = ("Thanks, that was helpful!", "Nice, I like that combination.", "Great, that gives me some ideas.")


class TemplateClient:
  """Rule-based stand-in for an LLM (see the module docstring): NOT a language model."""

  def __init__(self, config: LLMConfig):
    self.config = config
    self.limiter = RateLimiter(config.requests_per_minute, burst_s=config.rate_burst_s,
                               state_file=config.rate_state_file)

  async def __aenter__(self) -> "TemplateClient":
    return self

  async def __aexit__(self, *exc_info) -> None:
    return None

  async def complete(self, request: LLMRequest) -> Completion | LLMFailure:
    if len(request.captions) < 2:
      return LLMFailure("llm_template_needs_images",
                        f"the template backend needs at least 2 captions, got {len(request.captions)}", 1)
    await self.limiter.acquire(0)
    return Completion(compose_dialogue(request.captions, random.Random(request.id)), "stop", 1)


def compose_dialogue(captions, rng: random.Random) -> str:
  first = captions[0]
  turns = [(HUMAN, f"{rng.choice(OPENERS)} {image_tag(0, first)} {rng.choice(FIRST_QUESTIONS)}"),
           (ASSISTANT, rng.choice(FIRST_ANSWERS).format(caption=_plain(first)))]
  if len(captions) == 2:
    turns += [(HUMAN, rng.choice(SHOW_REQUESTS)), (ASSISTANT, rng.choice(SHOWS).format(tag=image_tag(1, captions[1])))]
  else:
    turns += [(HUMAN, rng.choice(COMPARE_REQUESTS).format(tag=image_tag(1, captions[1]))),
              (ASSISTANT, rng.choice(COMPARE_ANSWERS).format(caption=_plain(captions[1]), first=_plain(first),
                                                             tag=image_tag(2, captions[2])))]
  if rng.random() < 0.5:
    turns.append((HUMAN, rng.choice(CLOSINGS)))
  return "\n".join(f"{marker} {text}" for marker, text in turns)


def _plain(caption: str) -> str:
  """A caption inside a sentence: no trailing period, lower-case start."""
  caption = caption.strip().rstrip(".")
  return caption[:1].lower() + caption[1:]
