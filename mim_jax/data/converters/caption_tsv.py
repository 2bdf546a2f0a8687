"""Stage-1 image–caption pairs from a TSV (CC3M, CC12M, SBU style) → caption records.

Each line holds two tab-separated fields, a caption and an image, in either
order (CC3M writes `caption\\turl`, CC12M `url\\tcaption`): the field that is an
http(s) URL or ends in an image suffix is the image. A path is read relative
to --images. A URL is not fetched (downloading is img2dataset's job; its
webdataset output has its own converter): the image is looked up in --images
under the URL's last path component, which is how wget-style downloads of
SBU and CC name their files. A first line of column names is skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

from mim_jax.data.conversation import ConversationError
from mim_jax.data.converters.common import ImageFolder, convert_each
from mim_jax.data.problems import ProblemCounts

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
HEADER_NAMES = {"caption", "url", "image", "image_path", "path", "filepath", "file", "text"}


def _is_image(value: str) -> bool:
  return value.startswith(("http://", "https://")) or value.lower().endswith(IMAGE_SUFFIXES)


def _file_name(image: str) -> str:
  if image.startswith(("http://", "https://")):
    return unquote(urlparse(image).path.rsplit("/", 1)[-1])
  return image


def _lines(input: Path, counts: ProblemCounts) -> Iterator[tuple[int, str]]:
  if not input.is_file():
    raise FileNotFoundError(f"caption file {input} not found")
  with input.open(encoding="utf-8", errors="replace") as lines:
    for number, line in enumerate(lines, 1):
      line = line.rstrip("\r\n")
      if number == 1 and {f.strip().lower() for f in line.split("\t")} <= HEADER_NAMES:
        counts.notes["header line skipped"] += 1
        continue
      if line.strip():
        yield number, line


def records(input: Path, images: Path | None, counts: ProblemCounts, source: str,
            workers: int = 1) -> Iterator[dict]:
  folder = ImageFolder(images or input.parent)

  def to_record(index: int, numbered_line) -> dict:
    number, line = numbered_line
    where = f"{input.name} line {number}"
    fields = line.split("\t")
    if len(fields) != 2:
      raise ConversationError("malformed", f"{where}: {len(fields)} tab-separated fields, expected caption and image")
    first, second = (field.strip() for field in fields)
    if _is_image(first) and not _is_image(second):
      image, caption = first, second
    elif _is_image(second):
      caption, image = first, second
    else:
      raise ConversationError("malformed", f"{where}: neither field is a URL or an image file name")
    if not caption:
      raise ConversationError("empty_text", f"{where}: empty caption")
    data, _ = folder.read(_file_name(image))
    return {"id": f"{input.stem}-{number}", "source": source, "caption": caption, "image": data}

  return convert_each(_lines(input, counts), to_record, counts, workers)
