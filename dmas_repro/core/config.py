"""Configuration declared once, as dataclasses; everything else is derived from them.

- `opt(default, help, ...)`: a dataclass field with its command-line help (and, where needed, its
  flag name, choices or parser) in the field's metadata.
- `add_arguments(parser, Cls)` / `from_args(Cls, args)`: the command-line flags of a config and
  the config back from the parsed flags (`--val-tokens` for `val_tokens`; a bool defaulting to
  False is a switch; tuples take comma-separated values).
- `set_key(cfg, key, value, origin)`: one `KEY=VALUE` override or YAML entry, typed by the field's
  annotation; an unknown key is an error naming the closest ones ("did you mean ...").
- `read_yaml(path)`, `parse_override(item)`: the text forms of those.
- `describe(Cls)`: the keys, types and defaults of a config, for `--help` texts.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from pathlib import Path

from .errors import UserError


def opt(default=dataclasses.MISSING, help: str = "", *, factory=None, **cli):
    """A dataclass field with command-line metadata. `cli` may hold: flag (the option name),
    choices, metavar, nargs, action, parse (a function str -> value), convert (the parsed flag's
    value -> the field's), positional=True, cli=False (not a flag)."""
    kw = {"metadata": {"help": help, **cli}}
    if factory is not None:
        return dataclasses.field(default_factory=factory, **kw)
    return dataclasses.field(default=default, **kw)


def hints(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _base(hint):
    args = typing.get_args(hint)
    optional = type(None) in args
    if args and typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        hint = next(a for a in args if a is not type(None))
    return hint, optional


def coerce(key: str, value, hint):
    """A YAML/CLI value as the field's type (int, float, bool, str, dict, tuple, or None for Optional)."""
    base, optional = _base(hint)
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    if value is None:
        if base is str:
            return ""
        raise UserError(f"config key {key}: a value is required")
    ok = True
    origin = typing.get_origin(base)
    if base is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            value = value.lower() in ("true", "yes", "1", "on")
        ok = isinstance(value, bool)
    elif base is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str):
            try:
                value = int(float(value)) if float(value).is_integer() else value
            except ValueError:
                pass
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                value = float(value)
            except ValueError:
                ok = False
        ok = ok and isinstance(value, float)
    elif base is str:
        value = str(value)
    elif base is dict or origin is dict:
        ok = isinstance(value, dict)
    elif base is tuple or origin is tuple:
        item = (typing.get_args(base) or (str,))[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            value = tuple(coerce(key, v, item) for v in value)
        ok = isinstance(value, tuple)
    if not ok:
        raise UserError(f"config key {key}: {value!r} is not a {getattr(base, '__name__', base)}")
    return value


def unknown_key(key: str, known, origin: str, what: str = "config key") -> UserError:
    close = difflib.get_close_matches(key, list(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(sorted(known))}"
    return UserError(f"{origin}: unknown {what} {key!r}{hint}")


def set_key(cfg, key: str, value, origin: str) -> None:
    """Set one typed field of a dataclass instance; unknown keys are errors with suggestions."""
    h = hints(type(cfg))
    if key not in h:
        raise unknown_key(key, h, origin)
    setattr(cfg, key, coerce(key, value, h[key]))


def parse_override(item: str) -> tuple[str, object]:
    """'key=value' -> (key, value parsed as YAML: numbers, booleans, lists, strings)."""
    import yaml

    if "=" not in item:
        raise UserError(f"override {item!r}: expected key=value")
    k, v = item.split("=", 1)
    try:
        value = yaml.safe_load(v) if v.strip() else ""
    except yaml.YAMLError:
        value = v
    return k.strip(), value


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping of config keys (one clear error for a missing, broken or non-mapping file)."""
    import yaml

    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"{p}: no such config file") from None
    except IsADirectoryError:
        raise UserError(f"{p}: a directory, not a config file") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a text file") from None
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{p}: expected a mapping of config keys")
    return doc


def describe(cls, defaults=None) -> str:
    """'key (type, default ...)' lines of a config's fields."""
    defaults = defaults or cls()
    lines = []
    for f in dataclasses.fields(cls):
        t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        lines.append(f"  {f.name} ({t}) = {getattr(defaults, f.name)!r}")
    return "\n".join(lines)


# ---------------------------------------------------------------- command-line flags
def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def cli_fields(cls, only=None, exclude=()) -> list[dataclasses.Field]:
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False or f.name in exclude or (only is not None and f.name not in only):
            continue
        out.append(f)
    return out


def add_arguments(parser: argparse.ArgumentParser, cls, only=None, exclude=(), defaults: dict | None = None) -> None:
    """One flag per field of `cls` (its help from the field's metadata). Flags default to None
    (unset), so `from_args` keeps the dataclass's own default, or `defaults[name]`, for them."""
    h = hints(cls)
    for f in cli_fields(cls, only, exclude):
        base, _ = _base(h[f.name])
        default = (defaults or {}).get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = (defaults or {}).get(f.name, f.default_factory())
        help_text = f.metadata.get("help", "")
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        if shown not in (None, "", False) and "default" not in help_text:
            help_text = f"{help_text} (default {shown})" if help_text else f"default {shown}"
        kw: dict = {"help": help_text, "default": None}
        if f.metadata.get("positional"):
            parser.add_argument(f.name, nargs=f.metadata.get("nargs", "?"), metavar=f.metadata.get("metavar"),
                                help=help_text, default=None)
            continue
        if base is bool:
            kw["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        else:
            kw["type"] = f.metadata.get("parse") or _parser_for(f.name, h[f.name])
            for k in ("choices", "metavar", "nargs", "action"):
                if k in f.metadata:
                    kw[k] = f.metadata[k]
        parser.add_argument(_flag(f), dest=f.name, **kw)


def _parser_for(name: str, hint):
    base, _ = _base(hint)

    def parse(text: str):
        return coerce(name, text, base)

    parse.__name__ = getattr(base, "__name__", "value")
    return parse


def from_args(cls, args: argparse.Namespace, only=None, exclude=(), **fields):
    """A `cls` from parsed flags (unset flags keep the dataclass default), then `fields`."""
    kw = {}
    h = hints(cls)
    for f in cli_fields(cls, only, exclude):
        v = getattr(args, f.name, None)
        if v is not None:
            base, _ = _base(h[f.name])
            if "convert" in f.metadata:  # e.g. repeated KEY=VALUE flags -> a dict
                v = f.metadata["convert"](v)
            elif isinstance(v, list) and (base is tuple or typing.get_origin(base) is tuple):
                v = tuple(v)
            kw[f.name] = v
    kw.update({k: v for k, v in fields.items() if v is not None})
    return cls(**kw)
