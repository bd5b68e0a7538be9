"""Dockerfile parsing as Docker's parser does it.

* Parser directives (``# syntax=…``, ``# escape=…``, ``# check=…``) are read only at the very top:
  the first comment that is not a directive, blank line or instruction ends them.
* A line ending in the escape character (after trailing whitespace) continues on the next;
  comment lines and blank lines inside a continuation are dropped.
* The keyword is case-insensitive; ``--flag=value`` words right after it are the instruction's
  flags; ``RUN``/``CMD``/``ENTRYPOINT``/``SHELL`` (and ``COPY``/``ADD``/``VOLUME``) take the JSON
  exec form when the rest parses as a JSON array of strings, the shell form otherwise.
* Heredocs (``RUN <<EOF``) belong to BuildKit's frontend, not the classic builder: refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from protos.errors import InvalidArgument

INSTRUCTIONS = ("add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from", "healthcheck", "label",
                "maintainer", "onbuild", "run", "shell", "stopsignal", "user", "volume", "workdir")
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_KNOWN_DIRECTIVES = ("syntax", "escape", "check")
_HEREDOC = re.compile(r"<<-?\s*['\"]?[A-Za-z_][A-Za-z0-9_]*['\"]?")


class DockerfileError(InvalidArgument):
    """A Dockerfile that does not parse; the message names the line as Docker does."""


@dataclass(frozen=True, slots=True)
class Instruction:
    cmd: str  # lower-case keyword
    rest: str  # the argument text after the keyword and its flags
    original: str  # the whole logical line as written (what "Step N/M :" shows)
    line: int
    flags: dict[str, str] = field(default_factory=dict)
    json_args: tuple[str, ...] | None = None  # exec form, when the rest is a JSON array

    @property
    def keyword(self) -> str:
        return self.cmd.upper()


@dataclass(frozen=True, slots=True)
class Dockerfile:
    instructions: tuple[Instruction, ...]
    directives: dict[str, str]
    escape: str = "\\"


def _directives(lines: list[str]) -> tuple[dict[str, str], int]:
    found: dict[str, str] = {}
    for index, line in enumerate(lines):
        m = _DIRECTIVE.match(line.strip())
        if not m or m.group(1).lower() not in _KNOWN_DIRECTIVES:
            return found, index
        name = m.group(1).lower()
        if name in found:
            raise DockerfileError(f"only one {name} parser directive can be used")
        found[name] = m.group(2)
    return found, len(lines)


def _logical_lines(lines: list[str], start: int, escape: str) -> list[tuple[int, str]]:
    """Join continuations; returns (first line number, text) per logical line. The first line
    loses its leading whitespace, continuation lines keep theirs and are joined as they are."""
    continuation = re.compile(re.escape(escape) + r"[ \t]*$")
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    first = 0
    for number, raw in enumerate(lines[start:], start=start + 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments and blank lines, also inside a continuation
        text = raw if pending else raw.lstrip()
        if not pending:
            first = number
        if continuation.search(text):
            pending.append(continuation.sub("", text))
            continue
        pending.append(text.rstrip())
        out.append((first, "".join(pending)))
        pending = []
    if pending:
        out.append((first, "".join(pending)))
    return out


def _split_flags(rest: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    while rest.startswith("--"):
        word, _, remainder = rest.partition(" ")
        name, sep, value = word[2:].partition("=")
        if not name:
            break
        flags[name] = value if sep else "true"
        rest = remainder.lstrip()
    return flags, rest


def _json_array(rest: str) -> tuple[str, ...] | None:
    stripped = rest.strip()
    if not stripped.startswith("["):
        return None
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


_FLAGGED = {"from": ("platform",), "copy": ("from", "chown", "chmod", "link", "parents", "exclude"),
            "add": ("chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"),
            "run": ("mount", "network", "security"),
            "healthcheck": ("interval", "timeout", "start-period", "start-interval", "retries")}
_JSON_FORMS = ("run", "cmd", "entrypoint", "shell", "copy", "add", "volume")


def parse_instruction(number: int, text: str) -> Instruction:
    keyword, _, rest = text.partition(" ")
    if "\t" in keyword:
        keyword, _, more = keyword.partition("\t")
        rest = f"{more} {rest}".strip()
    cmd = keyword.lower()
    if cmd not in INSTRUCTIONS:
        raise DockerfileError(f"dockerfile parse error on line {number}: unknown instruction: {keyword.upper()}")
    rest = rest.strip()
    flags: dict[str, str] = {}
    if cmd in _FLAGGED:
        flags, rest = _split_flags(rest)
        for name in flags:
            if name not in _FLAGGED[cmd]:
                raise DockerfileError(f"dockerfile parse error on line {number}: unknown flag: {name}")
        if cmd == "run" and flags:
            raise DockerfileError(f"dockerfile parse error on line {number}: the --{next(iter(flags))} flag of "
                                  "RUN requires BuildKit, which Berth's classic builder does not implement")
    if cmd in ("run", "copy", "add") and _HEREDOC.search(rest) and _json_array(rest) is None:
        raise DockerfileError(f"dockerfile parse error on line {number}: heredocs require BuildKit, which Berth's "
                              "classic builder does not implement")
    json_args = _json_array(rest) if cmd in _JSON_FORMS else None
    if not rest and cmd not in ("cmd", "entrypoint", "run"):
        raise DockerfileError(f"dockerfile parse error on line {number}: {cmd.upper()} requires at least "
                              "one argument")
    return Instruction(cmd=cmd, rest=rest, original=text.strip(), line=number, flags=flags, json_args=json_args)


def parse(text: str) -> Dockerfile:
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.splitlines()
    directives, start = _directives(lines)
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise DockerfileError(f"invalid escape token '{escape}' does not match ` or \\")
    instructions = tuple(parse_instruction(n, t) for n, t in _logical_lines(lines, start, escape))
    if not instructions:
        raise DockerfileError("the Dockerfile cannot be empty")
    return Dockerfile(instructions=instructions, directives=directives, escape=escape)
