"""The one dict round trip every model config dataclass shares.

`to_dict()` gives plain nested dicts (JSON-ready: what run checkpoints,
exports and ml_collections configs store); `from_dict(values)` builds the
config back, recursing into fields that are themselves configs, and rejects
keys the class does not have, so a typo in a config file or an export from a
newer version fails loudly instead of training the default. A missing key
takes the field's default (that is how MIMConfig reads exports made before
the image medium existed).
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar, Mapping


class ConfigBase:
  """Mixin for frozen config dataclasses; `SECTION` names the config in errors (`model`, `vision`, ...)."""

  SECTION: ClassVar[str] = "model"

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]):
    """`cls(**values)` with nested config fields built from their dicts.

    Raises ValueError naming the section, the class, the unknown keys and the known ones."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
      raise ValueError(f"unknown {cls.SECTION} field(s) {unknown} for {cls.__name__}; known fields: {sorted(known)}")
    # Resolved here, not at import: the annotations are strings (`from __future__ import annotations`).
    types = typing.get_type_hints(cls)
    return cls(**{name: _field_value(types[name], value) for name, value in values.items()})

  def to_dict(self) -> dict[str, Any]:
    """Every field, nested configs as dicts; `from_dict(to_dict())` equals `self`."""
    return dataclasses.asdict(self)


def _field_value(field_type, value):
  if isinstance(field_type, type) and issubclass(field_type, ConfigBase) and isinstance(value, Mapping):
    return field_type.from_dict(value)
  return value


def from_preset(cls, presets: Mapping[str, Mapping[str, Any]], name: str, overrides: Mapping[str, Any]):
  """`cls.from_dict(presets[name] | overrides)`; an unknown name lists the presets there are."""
  if name not in presets:
    raise ValueError(f"unknown {cls.SECTION} preset {name!r}; presets: {', '.join(presets)}")
  return cls.from_dict({**presets[name], **overrides})
