"""Base class of validated, immutable configs: unknown fields are rejected with a clear error."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from quantbalance.errors import ConfigError


def format_validation_error(cls_name: str, err: ValidationError) -> str:
    """Turn a pydantic error into one message naming each field, its value and what is allowed.

    Args:
        cls_name: the config class name.
        err: the pydantic error.

    Returns:
        A readable multi-line message.
    """
    lines = [f"invalid {cls_name}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(root)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  unknown field '{field}' (value {e.get('input')!r})")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  {field}={e.get('input')!r}: {msg}")
    return "\n".join(lines)


class FrozenConfig(BaseModel):
    """Immutable pydantic model that forbids unknown fields and raises ConfigError."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            allowed = ", ".join(sorted(type(self).model_fields))
            raise ConfigError(
                f"{format_validation_error(type(self).__name__, err)}\n  allowed fields: {allowed}"
            ) from None
