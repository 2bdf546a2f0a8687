"""The generation prompt (spec §1 step 2), in our own words.

    build_prompt(captions, examples) -> str

`captions`: the conversation's images in order (they become <img0>, <img1>,
…); `examples`: the in-context examples (fewshot.Example: captions +
dialogue). The sections follow the spec's order: task → image notation and
"assume nothing beyond the descriptions" → the allowed images → what the
assistant can do → what the human does → bad vs good dialogues → examples
→ constraints → the reminder to refer to shown images by their order. The
prompt is the single user message; there is no system prompt.
"""
from __future__ import annotations

from typing import Sequence

from data_gen.dialogue import image_list_text, image_tag

MAX_TURNS = 6  # the dialogue must have fewer turns than this

TASK = """\
Your task is to write a conversation between a human and an AI assistant that is helpful, honest and \
harmless. The conversation mixes text and images: either side may include images in what they say."""

NOTATION = f"""\
You cannot see the images. Each image is given to you as a short description wrapped in a numbered tag, \
for example {image_tag(0, "a red bicycle leaning against a brick wall")}. Treat the description as all there \
is to know about the image: do not invent details it does not state."""

IMAGES_HEADER = """\
These are the only images that may appear in the conversation:"""

ASSISTANT_ABILITIES = """\
What the assistant can do:
- It understands the images it is shown and can talk about them in depth.
- It can answer with text, with images, or with both.
- It has broad knowledge of the world and can bring it into the conversation.
- It has no access to the internet or to any other tool.
- It can only show images taken from the list above, and it shows each one at most once. To talk about an \
image that has already appeared, it describes it in words instead of showing it again."""

HUMAN_BEHAVIOUR = """\
What the human does:
- Sends images, text, or both.
- Asks how the images relate to one another.
- Asks the assistant to show an image.
- Asks for something interesting that goes beyond a plain description of a picture."""

QUALITY = """\
What makes a conversation bad: it only describes the images, or its turns do not follow from one another.
What makes a conversation good: it brings in information from outside the images that is worth reading, it \
draws connections between the images, and it has a believable reason for the images to come up."""

EXAMPLES_HEADER = "Here are some examples."

CONSTRAINTS = f"""\
Now write the conversation for the images listed at the top. Rules:
- It has fewer than {MAX_TURNS} turns.
- It makes sense on its own, without these instructions.
- Every image is written with the same tag notation as above, and its description is copied exactly, \
word for word.
- Each turn starts on a new line with "Human:" or "Assistant:".
- It may stop without a closing remark or goodbye."""

REMINDER = """\
One last reminder: once an image has been shown, refer to it by its order in the conversation, such as \
"the first image" or "the second image", and do not show it again."""


def build_prompt(captions: Sequence[str], examples: Sequence) -> str:
  if not captions:
    raise ValueError("a prompt needs at least one image caption")
  sections = [TASK, NOTATION, f"{IMAGES_HEADER}\n{image_list_text(captions)}", ASSISTANT_ABILITIES, HUMAN_BEHAVIOUR,
              QUALITY]
  if examples:
    sections.append(EXAMPLES_HEADER)
    for number, example in enumerate(examples, 1):
      sections.append(f"Example {number}\nInput images:\n{image_list_text(example.captions)}\n"
                      f"Output conversation:\n{example.dialogue}")
  sections += [CONSTRAINTS, REMINDER]
  return "\n\n".join(sections)
