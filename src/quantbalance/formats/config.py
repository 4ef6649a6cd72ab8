"""Base class of validated, immutable configs: unknown fields are rejected with a clear error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from quantbalance.errors import ConfigError


def format_validation_error(cls_name: str, err: ValidationError) -> str:
    """Turn a pydantic error into one message naming each field, its value and what is allowed.

    A nested config's own ``ConfigError`` (raised inside validation) is kept whole and indented
    under the field it belongs to, rather than repeated.

    Args:
        cls_name: the config class name.
        err: the pydantic error.

    Returns:
        A readable multi-line message.
    """
    lines = [f"invalid {cls_name}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(root)"
        inner = e.get("ctx", {}).get("error")
        if isinstance(inner, ConfigError):
            text = str(inner)
            if field == "(root)" and text.startswith(lines[0]):
                lines.extend(text.splitlines()[1:])
            else:
                first, *rest = text.splitlines()
                lines.append(f"  {field}: {first}")
                lines.extend("  " + line for line in rest)
        elif e["type"] == "extra_forbidden":
            lines.append(f"  unknown field '{field}' (value {e.get('input')!r})")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  {field}={e.get('input')!r}: {msg}")
    return "\n".join(lines)


class FrozenConfig(BaseModel):
    """Immutable pydantic model that forbids unknown fields and raises ConfigError.

    A subclass lists in ``positional`` the fields that may be given by position, in order
    (``PerGroup(128)`` is ``PerGroup(size=128)``); every other field is keyword-only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    positional: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, **data: Any) -> None:
        name = type(self).__name__
        names = type(self).positional
        if len(args) > len(names):
            taken = f"at most {len(names)} ({', '.join(names)})" if names else "no"
            fields = [k for k in type(self).model_fields if k != "type"]
            example = ", ".join(f"{k}=..." for k in (names or fields[:3]))
            raise ConfigError(
                f"{name}() takes {taken} arguments by position, got {len(args)} "
                f"({', '.join(repr(a) for a in args)}); write {name}({example})"
                + (f"; its fields: {', '.join(fields)}" if fields else "")
            )
        for key, value in zip(names, args, strict=False):
            if key in data:
                raise ConfigError(f"{name}(): {key} given twice (by position and as {key}=)")
            data[key] = value
        _check_keys(name, data)
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise _config_error(type(self), err) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """pydantic's ``model_validate``, raising ``ConfigError`` instead of ``ValidationError``.

        Args:
            obj: the data (a dict, or an instance).
            **kwargs: passed to pydantic.

        Returns:
            The validated instance.
        """
        _check_keys(cls.__name__, obj)
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as err:
            raise _config_error(cls, err) from None

    @classmethod
    def model_validate_json(cls, json_data: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """pydantic's ``model_validate_json``, raising ``ConfigError``.

        Args:
            json_data: JSON text or bytes.
            **kwargs: passed to pydantic.

        Returns:
            The validated instance.
        """
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as err:
            raise _config_error(cls, err) from None


def _check_keys(name: str, obj: Any, where: str = "") -> None:
    """Every mapping inside a config's data must have text keys (fields, layer names)."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ConfigError(
                    f"invalid {name}: key {k!r} ({type(k).__name__}) in {where or 'the data'}; "
                    "field names and layer names are text, e.g. '0' rather than 0"
                )
            _check_keys(name, v, f"{where}.{k}" if where else k)
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_keys(name, v, f"{where}[{i}]")


def _config_error(cls: type[BaseModel], err: ValidationError) -> ConfigError:
    text = format_validation_error(cls.__name__, err)
    allowed = f"  allowed fields: {', '.join(sorted(cls.model_fields))}"
    if not text.endswith(allowed):
        text += "\n" + allowed
    return ConfigError(text)
