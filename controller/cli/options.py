"""Options of the long-running binaries: every flag has an environment variable.

`ds01 operator` and `ds01 agent` run as a Deployment, a DaemonSet or a
systemd service, where settings come as environment variables as often as
flags. Every option ``--some-name`` of those commands can therefore also be
set as ``DS01_SOME_NAME``; a flag on the command line wins over the
environment, which wins over the built-in default. Values from either place
go through the same parsing (one duration syntax: ``30s``, ``5m``, ``1h30m``,
``0``) and checks, and a bad value stops the start with a message naming the
flag or variable and exit status 2, instead of being ignored. Once logging is
set up, one `effective configuration` line lists every setting and where it
came from (``flag``, ``env`` or ``default``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from controller.policy.units import UNLIMITED, parse_duration

ENV_PREFIX = "DS01_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_REQUIRED = "_ds01_required"
_PARSER = "_ds01_parser"


class _Unset:
    """An option's default while parsing: tells "not on the command line" apart."""

    def __init__(self, default: Any) -> None:
        self.default = default

    def __repr__(self) -> str:
        return repr(self.default)


class _UnsetList(list[Any]):
    """The same for a repeatable option: argparse appends flag values to its default,
    so the marker must be a list; still empty after parsing means "not given"."""

    def __init__(self, default: Any) -> None:
        super().__init__()
        self.default = default

    def __repr__(self) -> str:
        return repr(self.default)


# -- value types shared by both binaries -------------------------------------------


def duration(text: str) -> timedelta:
    """A Go-notation duration (``30s``, ``5m``, ``1h30m``) or ``0``."""
    if text.strip() == "0":
        return timedelta(0)
    try:
        return parse_duration(text.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_duration(text: str) -> timedelta:
    value = duration(text)
    if not value:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than 0s")
    return value


def seconds(text: str) -> float:
    """A duration (``5s``, ``500ms``, ``5m``, ``0``), as seconds."""
    return duration(text).total_seconds()


def duration_or_unlimited(text: str) -> timedelta | None:
    """A positive duration, or ``Unlimited`` (None)."""
    if text.strip() == UNLIMITED:
        return None
    return positive_duration(text)


def log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level: use one of {', '.join(LOG_LEVELS)} (any case)"
        )
    return level


def octal_mode(text: str) -> int:
    """A file mode in octal (`666`, `0660`)."""
    try:
        mode = int(text, 8)
    except ValueError:
        message = f"{text!r} is not an octal file mode such as 660"
        raise argparse.ArgumentTypeError(message) from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a file mode (000 to 777)")
    return mode


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


# -- flags and environment ------------------------------------------------------------


def env_name(action: argparse.Action) -> str:
    """``--default-enforcement`` -> ``DS01_DEFAULT_ENFORCEMENT``."""
    return ENV_PREFIX + action.dest.upper()


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.option_strings and not isinstance(a, argparse._HelpAction) and a.dest != "help"
    ]


def with_environment(parser: argparse.ArgumentParser) -> None:
    """Give every option of ``parser`` its environment variable; call after adding them all.

    Required options become "required from the flag or the environment", checked by
    `resolve`.
    """
    required = []
    for action in _options(parser):
        if action.required:
            action.required = False
            required.append(action.dest)
        shown = "" if action.default in (None, False) else f"; default {action.default}"
        action.help = f"{action.help or ''} [${env_name(action)}{shown}]".lstrip()
        appends = isinstance(action, argparse._AppendAction)
        action.default = _UnsetList(action.default) if appends else _Unset(action.default)
    parser.set_defaults(**{_REQUIRED: tuple(required), _PARSER: parser})


def _convert(action: argparse.Action, text: str) -> Any:
    """An environment value, parsed as the flag's value would be."""
    if action.nargs == 0:  # store_true / store_false
        word = text.strip().lower()
        if word not in _TRUE + _FALSE:
            raise argparse.ArgumentTypeError(f"{text!r} is not a yes/no value (true, false, 1, 0)")
        given = word in _TRUE
        return given if action.const is True else not given
    items = (
        [t for t in text.split(",") if t] if isinstance(action, argparse._AppendAction) else [text]
    )
    values = [action.type(item) if callable(action.type) else item for item in items]
    for value in values:
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not one of {', '.join(map(str, action.choices))}"
            )
    return values if isinstance(action, argparse._AppendAction) else values[0]


def _default(action: argparse.Action, value: Any) -> Any:
    if isinstance(value, str) and callable(action.type):
        return action.type(value)
    return value


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Fill in options not given as flags from the environment, then the defaults.

    Updates ``args`` in place and returns where each setting came from. A bad value
    ends the process through ``parser.error`` (message naming the variable, status 2).
    """
    environ = os.environ if environ is None else environ
    parser: argparse.ArgumentParser = getattr(args, _PARSER)
    sources: dict[str, str] = {}
    problems: list[str] = []
    for action in _options(parser):
        value = getattr(args, action.dest, None)
        if isinstance(value, _UnsetList):
            if value:  # the flag was given (repeatedly): its values, as a plain list
                setattr(args, action.dest, list(value))
                sources[action.dest] = "flag"
                continue
            value = _Unset(value.default)
        if not isinstance(value, _Unset):
            sources[action.dest] = "flag"
            continue
        text = environ.get(env_name(action))
        try:
            if text is not None and text != "":
                setattr(args, action.dest, _convert(action, text))
                sources[action.dest] = "env"
            else:
                setattr(args, action.dest, _default(action, value.default))
                sources[action.dest] = "default"
        except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
            where = f"${env_name(action)}={text!r}" if text else action.option_strings[0]
            problems.append(f"{where}: {error}")
    for dest in getattr(args, _REQUIRED):
        if getattr(args, dest) is None:
            flag = next(a.option_strings[0] for a in _options(parser) if a.dest == dest)
            problems.append(f"{flag} (or ${ENV_PREFIX}{dest.upper()}) is required")
    if problems:
        parser.error("; ".join(problems))
    return sources


def effective(args: argparse.Namespace, sources: Mapping[str, str]) -> dict[str, Any]:
    """Every setting as ``{name: {"value": ..., "from": flag|env|default}}``, for the log."""
    out: dict[str, Any] = {}
    for dest, source in sorted(sources.items()):
        value = getattr(args, dest)
        if isinstance(value, timedelta):
            value = f"{value.total_seconds():g}s"
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, list | tuple):
            value = [str(v) for v in value]
        out[dest.replace("_", "-")] = {"value": value, "from": source}
    return out


def log_effective(logger_name: str, args: argparse.Namespace, sources: Mapping[str, str]) -> None:
    """One structured `effective configuration` line (logging must be configured)."""
    structlog.get_logger(logger_name).info(
        "effective configuration", settings=effective(args, sources)
    )
