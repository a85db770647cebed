"""One validation layer for every input file, settings object and API body (pydantic v2).

Why one layer: five hand-written validators had five sets of rules (a NaN passed some). Here every
input kind is a `Strict` model built from the field types below, so everywhere: unknown keys are
refused, wrong types are refused (no "3" for 3, no true for 1), NaN and infinities are refused,
every error names its field and all errors come at once. `problems()` turns pydantic's errors
into the one-line texts the command lines print (`field 'memory' must be positive, got 0`).
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Callable, Iterable

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

__all__ = ["Strict", "ValidationError", "problems", "invalid", "check_number", "Number", "Checked", "Text",
           "OptionalText", "Flag", "NumberMap", "MAX_NUMBER", "dotted", "one_of", "validated"]

MAX_NUMBER = 2 ** 53          # larger numbers in an input are typos (and overflow floats)


class Strict(BaseModel):
    """Base of every validated input: unknown keys, NaN and infinities refused; immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True,
                              hide_input_in_errors=True)


def invalid(message: str) -> PydanticCustomError:
    """An error whose text is `message` as given (it is printed after the field's name)."""
    return PydanticCustomError("invalid", "{message}", {"message": message})


def check_number(value: Any, *, kind: type = float, minimum: float | None = 0.0, positive: bool = False,
                 maximum: float = MAX_NUMBER, unit: str = "", what: str | None = None) -> int | float:
    """Return `value` as `kind` or raise ValueError with the reason (pure; used outside pydantic too).

    Refused: booleans, strings and anything not a number, NaN and infinities, more than `maximum`,
    a fraction where `kind` is int, less than `minimum` (or zero when `positive`)."""
    sign = "positive" if positive else ("non-negative" if minimum == 0 else None)
    described = what or (f"a {sign} number" if sign else "a number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be {described}, got {value!r}")
    if isinstance(value, int) and abs(value) > maximum:       # before isfinite(): it overflows a float
        raise ValueError(f"is too large (more than {_big(maximum)})")
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    if abs(value) > maximum:
        raise ValueError(f"is too large (more than {_big(maximum)}), got {value!r}")
    if kind is int and not float(value).is_integer():
        raise ValueError(f"must be an integer{f' ({unit})' if unit else ''}, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"must be a {sign} number, got {value!r}" if sign and minimum == 0
                         else f"must be >= {minimum:g}, got {value!r}")
    return kind(value)


def _big(maximum: float) -> str:
    return "2**53" if maximum == MAX_NUMBER else f"{maximum:g}"


def _pydantic(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def run(value: Any) -> Any:
        try:
            return check(value)
        except ValueError as exc:
            raise invalid(str(exc)) from None
    return run


def Number(kind: type = float, *, optional: bool = False, **rules: Any) -> Any:
    """A finite number field (see check_number for `rules`), e.g. `memory: Number(int, positive=True, unit="KB")`;
    `optional`: null (or absent, with a default of None) is allowed."""
    def check(value: Any) -> Any:
        return None if optional and value is None else check_number(value, kind=kind, **rules)
    return Annotated[kind | None if optional else kind, BeforeValidator(_pydantic(check))]


def Checked(kind: Any, check: Callable[[Any], Any]) -> Any:
    """A field checked by `check(value)`, which returns the value or raises ValueError("must be ...")."""
    return Annotated[kind, BeforeValidator(_pydantic(check))]


def _text(value: Any, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise ValueError(f"must be a {'' if empty else 'non-empty '}string, got {value!r}")
    return value


Text = Annotated[str, BeforeValidator(_pydantic(_text))]
OptionalText = Annotated[str | None, BeforeValidator(_pydantic(lambda v: None if v is None else _text(v, empty=True)))]


def one_of(choices: Iterable[str], *, fold: Callable[[str], str] = str) -> Callable[[Any], str]:
    """A check for Checked(): the value must be one of `choices` (after `fold`, e.g. str.upper)."""
    allowed = tuple(choices)

    def check(value: Any) -> str:
        if not isinstance(value, str) or fold(value) not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {value!r}")
        return fold(value)
    return check


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


Flag = Annotated[bool, BeforeValidator(_pydantic(_flag))]


def NumberMap(what: str, *, empty: bool = False, kind: type = float, **rules: Any) -> Any:
    """A mapping of names to finite numbers (e.g. node classes to seconds); each bad entry is named
    as `field.key`."""
    def shape(value: Any) -> Any:
        if not isinstance(value, dict) or (not empty and not value):
            raise ValueError(f"must map {what}, got {value!r}")
        return {str(k): v for k, v in value.items()}
    return Annotated[dict[str, Number(kind, **rules)], BeforeValidator(_pydantic(shape))]


def validated(model: type[BaseModel], value: Any, errors: list[str], where: str) -> Any:
    """Return `value` validated by `model`, or None after appending each problem as `where: problem`."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors.extend(f"{where}: {problem}" for problem in problems(exc))
        return None


def dotted(loc: Iterable[Any]) -> str:
    """('exec_time', 'small') -> 'exec_time.small'; list positions as [i]."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _field_style(field: str, text: str) -> str:
    return f"field '{field}' {text}" if field else text


def _unknown_style(parent: str, names: list[str]) -> list[str]:
    listed = ", ".join(sorted(names))
    return [f"field '{parent}' has unknown field(s) {listed}" if parent else f"unknown field(s) {listed}"]


_SHAPES = {"list_type": "a list", "dict_type": "an object", "model_type": "an object",
           "dataclass_type": "an object", "dataclass_exact_type": "an object", "string_type": "a string"}


def problems(exc: ValidationError, *, prefix: tuple = (), named: Callable[[str, str], str] = _field_style,
             unknown_keys: Callable[[str, list[str]], list[str]] = _unknown_style) -> list[str]:
    """Turn pydantic's errors into one-line texts, each naming its field; unknown keys grouped.

    `prefix` is dropped from the front of every location (the caller names that part itself);
    `named(field, text)` and `unknown_keys(parent, names)` word the lines (default: "field 'x' ...")."""
    out: list[str] = []
    unknown: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        if prefix and loc[:len(prefix)] == prefix:
            loc = loc[len(prefix):]
        kind = error["type"]
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):    # the latter: a dataclass's
            unknown.setdefault(dotted(loc[:-1]), []).append(str(loc[-1]))
            continue
        field = dotted(loc)
        if kind == "invalid":
            text = error["msg"]
        elif kind in ("missing", "missing_argument"):
            text = "is required"
        elif kind in _SHAPES:
            text = f"must be {_SHAPES[kind]}"
        else:
            message = error["msg"]
            text = message[:1].lower() + message[1:]
            if "input" in error and not isinstance(error["input"], (dict, list)):
                text += f", got {error['input']!r}"
        out.append(named(field, text))
    for parent, names in unknown.items():
        out.extend(unknown_keys(parent, names))
    return out
