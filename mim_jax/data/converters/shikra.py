"""Shikra's GPT4Gen referential dialogue data (`GPT4GEN_*BoxCoT*.jsonl`) → conversations.

Input: JSONL lines `{"img_path": "1000092795.jpg", "boxes": [[x0, y0, x1, y1], …] (pixels),
"question": "What is <ph_st>the man<ph_ed> holding?", "question_boxes_seq": [[0]],
"cot_with_ans": "… <ph_st>a kite<ph_ed> … So the answer is …", "answer_boxes_seq": [[1]],
"answer": "…"}`; images (Flickr30k) relative to --images.

Kept: one user turn (`<image>`, newline, question) and one assistant turn (the
reasoning-with-answer `cot_with_ans`, or `answer` where a line has none). The
boxes stay in the text, written the way Shikra writes them: the phrase, then
its boxes as `[x0,y0,x1,y1]` normalized by the image size to three decimals,
several boxes joined by `;`. The phrase markers and the other fields (ids of
the source annotations, image sizes) are dropped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from mim_jax.data import schema
from mim_jax.data.conversation import ConversationError
from mim_jax.data.converters.common import ImageFolder, convert_each, field, read_json_items, single_turn
from mim_jax.data.problems import ProblemCounts

PHRASE_START, PHRASE_END = "<ph_st>", "<ph_ed>"


def boxes_as_text(text: str, boxes_seq, boxes: list, size: tuple[int, int], where: str) -> str:
  """`text` with each phrase end replaced by the phrase's boxes, normalized."""
  pieces = text.replace(PHRASE_START, "").split(PHRASE_END)
  boxes_seq = boxes_seq or []
  if not isinstance(boxes_seq, list) or len(pieces) - 1 != len(boxes_seq):
    raise ConversationError("malformed", f"{where}: {len(pieces) - 1} phrases but box lists {boxes_seq!r}")
  width, height = size
  out = [pieces[0]]
  for indices, piece in zip(boxes_seq, pieces[1:]):
    try:
      coordinates = [(b[0] / width, b[1] / height, b[2] / width, b[3] / height) for b in (boxes[i] for i in indices)]
    except (IndexError, TypeError) as error:
      raise ConversationError("malformed", f"{where}: bad box reference {indices!r} ({error})") from None
    out.append("[" + ";".join(",".join(f"{c:.3f}" for c in box) for box in coordinates) + "]" + piece)
  return "".join(out)


def records(input: Path, images: Path | None, counts: ProblemCounts, source: str,
            workers: int = 1) -> Iterator[dict]:
  folder = ImageFolder(images or input.parent)

  def to_record(index: int, item) -> dict:
    where = f"{input.name}[{index}]"
    image = field(item, "img_path", str, where)
    boxes = field(item, "boxes", list, where)
    question = field(item, "question", str, where)
    data, size = folder.read(image)
    if isinstance(item.get("cot_with_ans"), str):
      answer = boxes_as_text(item["cot_with_ans"], item.get("answer_boxes_seq"), boxes, size, f"{where} answer")
    else:
      answer = field(item, "answer", str, where)
    question = boxes_as_text(question, item.get("question_boxes_seq"), boxes, size, f"{where} question")
    conversation = single_turn(question, answer, where, image=image)
    return schema.conversation_record(conversation, {image: data}, id=str(item.get("id", f"{input.stem}-{index}")),
                                      source=source)

  return convert_each(read_json_items(input), to_record, counts, workers)
