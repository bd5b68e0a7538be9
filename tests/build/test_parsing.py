"""Dockerfile parsing, word expansion and .dockerignore matching, against Docker's documented rules."""

from __future__ import annotations

import pytest

from apiserver.build.dockerfile import DockerfileError, parse
from apiserver.build.ignore import Matcher
from apiserver.build.shell import Lexer
from protos.errors import InvalidArgument


def test_directives_continuations_comments_and_forms() -> None:
    df = parse(
        "# syntax=docker/dockerfile:1\n"
        "# escape=`\n"
        "\n"
        "FROM busybox AS base\n"
        "# a comment\n"
        "RUN echo a `\n"
        "    # dropped inside a continuation\n"
        "\n"
        "    b\n"
        'COPY --from=base --chown=1:1 ["a b", "c"]\n'
        'CMD ["sh", "-c", "echo hi"]\n'
        "entrypoint echo not json [\n")
    assert df.directives == {"syntax": "docker/dockerfile:1", "escape": "`"}
    assert df.escape == "`"
    run = df.instructions[1]
    assert (run.cmd, run.rest, run.line, run.json_args) == ("run", "echo a     b", 6, None)
    copy = df.instructions[2]
    assert copy.flags == {"from": "base", "chown": "1:1"} and copy.json_args == ("a b", "c")
    assert df.instructions[3].json_args == ("sh", "-c", "echo hi")
    assert df.instructions[4].keyword == "ENTRYPOINT" and df.instructions[4].json_args is None


def test_directive_after_a_comment_is_just_a_comment() -> None:
    df = parse("# hello\n# escape=`\nFROM busybox\nRUN a \\\n b\n")
    assert df.directives == {} and df.instructions[1].rest == "a  b"


@pytest.mark.parametrize(("text", "message"), [
    ("FROM busybox\nFOO bar\n", "dockerfile parse error on line 2: unknown instruction: FOO"),
    ("", "cannot be empty"),
    ("# only a comment\n", "cannot be empty"),
    ("FROM busybox\nRUN <<EOF\necho\nEOF\n", "heredocs require BuildKit"),
    ("FROM busybox\nRUN --mount=type=cache,target=/x true\n", "requires BuildKit"),
    ("FROM busybox\nCOPY --bogus=1 a b\n", "unknown flag: bogus"),
    ("# escape=x\nFROM busybox\n", "invalid escape token"),
])
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=message):
        parse(text)


@pytest.mark.parametrize(("word", "expected"), [
    ("$A", "alpha"), ("${A}", "alpha"), ("pre${A}post", "prealphapost"), ("$UNSET", ""),
    ("${UNSET:-dflt}", "dflt"), ("${EMPTY:-dflt}", "dflt"), ("${EMPTY-dflt}", ""),
    ("${A:+alt}", "alt"), ("${UNSET:+alt}", ""), ("${EMPTY+set}", "set"), ("${EMPTY:+set}", ""),
    ("'$A'", "$A"), ('"$A b"', "alpha b"), ("\\$A", "$A"), ("a\\ b", "a b"), ("$", "$"),
    ("${UNSET:-${A}}", "alpha"), ('"quoted \\" inside"', 'quoted " inside'),
])
def test_word_expansion(word: str, expected: str) -> None:
    assert Lexer().process_word(word, {"A": "alpha", "EMPTY": ""}) == expected


def test_words_split_on_unquoted_space() -> None:
    lexer = Lexer()
    assert lexer.process_words('80/tcp "$P/udp" 90', {"P": "53"}) == ["80/tcp", "53/udp", "90"]
    assert Lexer(escape="`").process_word("a`$b", {}) == "a$b"


def test_expansion_errors() -> None:
    with pytest.raises(InvalidArgument, match="X: must be set"):
        Lexer().process_word("${X:?must be set}", {})
    with pytest.raises(InvalidArgument, match="matching single-quote"):
        Lexer().process_word("'open", {})


@pytest.mark.parametrize(("path", "excluded"), [
    ("node_modules", True), ("node_modules/a/b.js", True), ("src/app.py", False), ("src/app.pyc", True),
    ("deep/er/x.pyc", True), ("build/out/bin", True), ("build/keep.txt", False), ("README.md", True),
    ("docs/README.md", False), ("temp1", True), ("temp12", False), ("a/b/c/d.log", True), (".git/HEAD", True),
])
def test_dockerignore_rules(path: str, excluded: bool) -> None:
    matcher = Matcher.from_text(
        "# comment\n"
        "node_modules\n"
        "**/*.pyc\n"
        "/build\n"
        "!build/keep.txt\n"
        "README.md\n"
        "temp?\n"
        "a/**/*.log\n"
        ".git\n")
    assert matcher.excluded(path) is excluded


def test_dockerignore_illegal_exclusion() -> None:
    with pytest.raises(InvalidArgument, match="illegal exclusion pattern"):
        Matcher.from_text("!\n")
