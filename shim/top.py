"""``docker top``: the host's ``ps`` limited to a container's processes, as moby's
``ContainerTop`` does it (``ps <args> -q<pids>``, falling back to plain ``ps <args>`` for options
that cannot be combined with ``q``, then keeping the lines whose PID column is the container's).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence

from protos.errors import Internal, InvalidArgument
from shim.api import TopResult

_PS_PID_OPTION = re.compile(r"\s+([^\s]*)=\s*(PID[^\s]*)")


def validate(ps_args: str) -> None:
    for key, value in _PS_PID_OPTION.findall(ps_args):
        if key != "pid":
            raise InvalidArgument(f'specifying "{key}={value}" is not allowed')


def _fields(line: str) -> list[str]:
    return line.replace("\t", " ").replace("\f", " ").replace("\r", " ").split(" ")


def parse(output: str, pids: Sequence[int]) -> TopResult:
    lines = output.split("\n")
    titles = [f for f in _fields(lines[0]) if f]
    try:
        pid_index = titles.index("PID")
    except ValueError:
        raise Internal("Couldn't find PID field in ps output") from None
    wanted = set(pids)
    rows: list[tuple[str, ...]] = []
    previous_ours = False
    for line in lines[1:]:
        if not line:
            continue
        fields = [f for f in _fields(line) if f]
        if len(fields) <= pid_index:
            continue
        if fields[pid_index] == "-":  # a thread line ("m"): belongs to the process above
            if previous_ours:
                rows.append(_row(fields, len(titles)))
            continue
        try:
            pid = int(fields[pid_index])
        except ValueError:
            raise Internal(f"Unexpected pid '{fields[pid_index]}': invalid syntax") from None
        previous_ours = pid in wanted
        if previous_ours:
            rows.append(_row(fields, len(titles)))
    return TopResult(titles=tuple(titles), processes=tuple(rows))


def _row(fields: list[str], columns: int) -> tuple[str, ...]:
    """As many fields as titles: the overhanging ones (a command with spaces) joined into the last."""
    return (*fields[:columns - 1], " ".join(fields[columns - 1:]))


async def _ps(args: list[str]) -> tuple[int, str, str]:
    # COLUMNS (a terminal's width, inherited from whoever started us) would cut the command column.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = await asyncio.create_subprocess_exec("ps", *args, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=env)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def top(ps_args: str, pids: Sequence[int]) -> TopResult:
    ps_args = ps_args or "-ef"
    validate(ps_args)
    args = ps_args.split(" ")
    code, out, err = await _ps([*args, "-q" + ",".join(str(p) for p in pids)])
    if code != 0:
        code, out, err = await _ps(args)
        if code != 0:
            first = err.split("\n", 1)[0]
            raise Internal(f"ps: {first or f'exit status {code}'}")
    return parse(out, pids)
