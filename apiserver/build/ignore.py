"""``.dockerignore`` patterns with Docker's rules (moby/patternmatcher).

* One pattern per line; lines starting with ``#`` are comments; surrounding space is trimmed.
* Patterns are cleaned like ``filepath.Clean`` and a leading ``/`` is dropped, so ``/a/./b`` is
  ``a/b``; ``!pattern`` re-includes what earlier patterns excluded; the last match wins.
* ``*`` and ``?`` never cross ``/``; ``**`` matches any number of directories (also none);
  ``[...]`` classes and ``\\`` escapes work as in Go's filepath.Match.
* A pattern also matches everything below a directory it matches (``build`` excludes
  ``build/x/y``), by matching the path's leading components against it.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from protos.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Pattern:
    text: str
    exclusion: bool
    regex: re.Pattern[str]
    depth: int  # number of path components


def _clean(path: str) -> str:
    cleaned = posixpath.normpath(path)
    return cleaned.lstrip("/") if cleaned != "/" else cleaned


def _compile(pattern: str) -> re.Pattern[str]:
    out = ["^"]
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 2
                if i < n and pattern[i] == "/":
                    out.append("(?:.*/)?")  # **/ : zero or more leading directories
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise InvalidArgument(f"syntax error in pattern: {pattern}")
            body = pattern[i + 1:end]
            if body.startswith("^") or body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 1
        else:
            out.append(re.escape(c))
        i += 1
    out.append("$")
    return re.compile("".join(out))


def parse(text: str) -> list[Pattern]:
    patterns: list[Pattern] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
            if not line:
                raise InvalidArgument('illegal exclusion pattern: "!"')
        cleaned = _clean(line)
        if cleaned in (".", "/"):
            cleaned = "**" if not exclusion else cleaned
        patterns.append(Pattern(cleaned, exclusion, _compile(cleaned), len(cleaned.split("/"))))
    return patterns


class Matcher:
    def __init__(self, patterns: list[Pattern]) -> None:
        self.patterns = patterns

    @classmethod
    def from_text(cls, text: str) -> Matcher:
        return cls(parse(text))

    def excluded(self, path: str) -> bool:
        """True if ``path`` (relative to the context root, ``/``-separated) is ignored."""
        path = _clean(path)
        parts = path.split("/")
        matched = False
        for p in self.patterns:
            hit = bool(p.regex.match(path))
            if not hit and len(parts) > p.depth:
                # a match on a parent directory covers everything below it
                hit = any(p.regex.match("/".join(parts[:k])) for k in range(p.depth, len(parts)))
            if hit:
                matched = not p.exclusion
        return matched

    def has_exclusions(self) -> bool:
        return any(p.exclusion for p in self.patterns)
