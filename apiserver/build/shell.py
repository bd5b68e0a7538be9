"""Word processing for Dockerfile instruction arguments, as Docker's shell lexer does it.

Applied by the builder to ADD, ARG, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME and
WORKDIR (never to RUN/CMD/ENTRYPOINT in shell form: that is the shell's job):

* ``$NAME`` and ``${NAME}`` expand to the variable ("" when unset);
* ``${NAME:-word}`` / ``${NAME-word}``: ``word`` when unset (``:-`` also when empty);
* ``${NAME:+word}`` / ``${NAME+word}``: ``word`` when set (``:+`` only when non-empty);
* ``${NAME:?msg}`` / ``${NAME?msg}``: an error when unset (or empty);
* single quotes are literal, double quotes group and still expand, the escape character
  (``\\`` or the ``# escape=`` directive's) makes the next character literal.

``process_word`` returns one string (quotes removed); ``process_words`` splits on unquoted
whitespace, as ``EXPOSE`` and the shell form of ``COPY``/``ADD`` need.
"""

from __future__ import annotations

from collections.abc import Mapping

from protos.errors import InvalidArgument


class Lexer:
    def __init__(self, escape: str = "\\") -> None:
        self.escape = escape

    def process_word(self, word: str, env: Mapping[str, str]) -> str:
        words = self._process(word, env, split=False)
        return words[0] if words else ""

    def process_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        return self._process(word, env, split=True)

    # -- implementation ----------------------------------------------------------------------------
    def _process(self, text: str, env: Mapping[str, str], *, split: bool) -> list[str]:
        words: list[str] = []
        current: list[str] = []
        started = False  # a word exists even if empty, e.g. ""
        i = 0
        n = len(text)
        while i < n:
            c = text[i]
            if split and c in " \t\n" :
                if started:
                    words.append("".join(current))
                    current, started = [], False
                i += 1
                continue
            started = True
            if c == self.escape:
                if i + 1 < n:
                    current.append(text[i + 1])
                    i += 2
                else:
                    current.append(c)
                    i += 1
            elif c == "'":
                end = text.find("'", i + 1)
                if end < 0:
                    raise InvalidArgument("unexpected end of statement while looking for matching single-quote")
                current.append(text[i + 1:end])
                i = end + 1
            elif c == '"':
                i = self._double_quoted(text, i + 1, env, current)
            elif c == "$":
                value, i = self._dollar(text, i + 1, env)
                current.append(value)
            else:
                current.append(c)
                i += 1
        if started or (not split and not words):
            words.append("".join(current))
        return words

    def _double_quoted(self, text: str, i: int, env: Mapping[str, str], out: list[str]) -> int:
        n = len(text)
        while i < n:
            c = text[i]
            if c == '"':
                return i + 1
            if c == self.escape and i + 1 < n and text[i + 1] in ('"', "$", self.escape):
                out.append(text[i + 1])
                i += 2
            elif c == "$":
                value, i = self._dollar(text, i + 1, env)
                out.append(value)
            else:
                out.append(c)
                i += 1
        raise InvalidArgument("unexpected end of statement while looking for matching double-quote")

    def _dollar(self, text: str, i: int, env: Mapping[str, str]) -> tuple[str, int]:
        """Expand the variable reference that starts after ``$`` at ``i``."""
        n = len(text)
        if i >= n:
            return "$", i
        if text[i] == "{":
            return self._braced(text, i + 1, env)
        j = i
        while j < n and (text[j].isalnum() or text[j] == "_"):
            j += 1
        if j == i:
            return "$", i  # a lone dollar stays literal
        return env.get(text[i:j], ""), j

    def _braced(self, text: str, i: int, env: Mapping[str, str]) -> tuple[str, int]:
        n = len(text)
        j = i
        while j < n and (text[j].isalnum() or text[j] == "_"):
            j += 1
        name = text[i:j]
        if not name:
            raise InvalidArgument(f"bad substitution: {text}")
        if j < n and text[j] == "}":
            return env.get(name, ""), j + 1
        colon = j < n and text[j] == ":"
        if colon:
            j += 1
        if j >= n or text[j] not in "-+?":
            raise InvalidArgument(f"unsupported modifier ({text[j:j + 1]}) in substitution: {text}")
        modifier = text[j]
        word, end = self._until_close(text, j + 1)
        present = name in env and (not colon or env[name] != "")
        if modifier == "-":
            value = env[name] if present else self.process_word(word, env)
        elif modifier == "+":
            value = self.process_word(word, env) if present else ""
        else:
            if not present:
                message = self.process_word(word, env) or "is not allowed to be unset"
                raise InvalidArgument(f"{name}: {message}")
            value = env[name]
        return value, end

    def _until_close(self, text: str, i: int) -> tuple[str, int]:
        """The raw text up to the matching ``}`` (nested braces allowed)."""
        depth = 0
        j = i
        while j < len(text):
            c = text[j]
            if c == self.escape:
                j += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                if depth == 0:
                    return text[i:j], j + 1
                depth -= 1
            j += 1
        raise InvalidArgument(f"missing '}}' in substitution: {text}")
