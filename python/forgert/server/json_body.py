"""Request bodies as JSON: valid JSON that the rest of the server cannot handle is a 400 here.

Three kinds of abuse get past a plain json.loads or blow up in it: nesting deep enough to
exhaust Python's recursion limit, integers longer than Python converts from text (4,300 digits),
and strings holding lone UTF-16 surrogates ("\\ud800"), which JSON allows but are not Unicode
text (the tokenizer cannot take them). Each becomes a 400 naming the field, before validation.
"""
from __future__ import annotations

import json
import re
import sys

from .errors import APIError

# No request field nests deeper than messages[i].content[j].text (4 levels); leave plenty of room.
MAX_DEPTH = 32
# Python refuses to convert longer decimal strings to int (sys.get_int_max_str_digits).
MAX_INT_DIGITS = getattr(sys, "get_int_max_str_digits", lambda: 4300)() or 4300

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class _OversizedInt:
    """Stands in for an integer literal too long to convert, so the field can be named."""

    def __init__(self, digits: int):
        self.digits = digits


def _parse_int(text: str):
    digits = len(text) - text.startswith("-")
    return _OversizedInt(digits) if digits > MAX_INT_DIGITS else int(text)


def decode_json(body: bytes):
    """The decoded body; any problem is an APIError(400) whose param names the field."""
    try:
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            raise
        except ValueError:
            # int() refused a literal of too many digits. Parse again (only on this rare path:
            # the hook costs a Python call per integer), keeping such literals as markers.
            data = json.loads(body, parse_int=_parse_int)
    except RecursionError:
        raise _too_deep() from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"We could not parse the JSON body of your request: {exc}",
                       code="invalid_json") from None
    _check_values(data)
    return data


def _too_deep() -> APIError:
    return APIError(400, f"The JSON body is nested too deeply: at most {MAX_DEPTH} levels of "
                         "arrays and objects are accepted", code="invalid_json")


def _field(path: tuple) -> str:
    """'messages.0.content'; a key that is itself the bad string is shown escaped."""
    name = ".".join(str(p) for p in path) or "(the body)"
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_values(data) -> None:
    """Walks the decoded tree without recursion (it may be deep) and refuses the first bad value.
    Scalars are checked in place, so a prompt of a million token ids costs one pass, no paths."""
    _check_scalar(data, ())
    stack = [(data, ())] if isinstance(data, (dict, list)) else []
    while stack:
        value, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            raise _too_deep()
        if isinstance(value, dict):
            for key, item in value.items():
                if _LONE_SURROGATE.search(key):
                    raise _surrogate(path + (key,))
                if isinstance(item, (dict, list)):
                    stack.append((item, path + (key,)))
                elif isinstance(item, (str, _OversizedInt)):
                    _check_scalar(item, path + (key,))
        else:
            for i, item in enumerate(value):
                if isinstance(item, (dict, list)):
                    stack.append((item, path + (i,)))
                elif isinstance(item, (str, _OversizedInt)):
                    _check_scalar(item, path + (i,))


def _check_scalar(value, path: tuple) -> None:
    if isinstance(value, str) and _LONE_SURROGATE.search(value):
        raise _surrogate(path)
    if isinstance(value, _OversizedInt):
        name = _field(path)
        raise APIError(400, f"Invalid value for '{name}': an integer of {value.digits} digits is "
                            f"too large (at most {MAX_INT_DIGITS} digits)",
                       param=name if path else None, code="invalid_value")


def _surrogate(path: tuple) -> APIError:
    name = _field(path)
    return APIError(400, f"Invalid value for '{name}': the string holds a lone UTF-16 surrogate "
                         "(\\ud800-\\udfff), which is not valid Unicode text",
                    param=name if path else None, code="invalid_value")
