"""Checks shared by the vision and Q-Former config dataclasses, with messages
that name the section and field (`vision.embed_dim`, `qformer.dtype`)."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping


def from_dict(cls, values: Mapping[str, Any], section: str):
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"unknown {section} field(s) {unknown}; known fields: {sorted(known)}")
  return cls(**dict(values))


def check_choice(section: str, field: str, value: Any, allowed: Iterable[str]) -> None:
  allowed = tuple(allowed)
  if value not in allowed:
    raise ValueError(f"{section}.{field} is {value!r}; allowed values: {', '.join(allowed)}")


def check_positive_ints(section: str, config: Any, fields: Iterable[str]) -> None:
  for field in fields:
    value = getattr(config, field)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"{section}.{field} must be a positive int, got {value!r}")


def check_divides(section: str, config: Any, whole: str, part: str) -> None:
  if getattr(config, whole) % getattr(config, part):
    raise ValueError(
        f"{section}.{whole} ({getattr(config, whole)}) must be a multiple of {section}.{part} "
        f"({getattr(config, part)})"
    )
