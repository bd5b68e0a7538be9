"""The classic builder: a Dockerfile, a context and options in; images and Docker's build stream
out (``Step N/M : …``, `` ---> id``, ``Successfully built``, ``Successfully tagged``, aux ID).

Every step yields an image (config stored on the node, indexed in Redis with its parent), so a
rebuild can reuse it: the cache key is the parent image id plus the step's ``created_by`` text,
which for COPY/ADD carries the content checksum of the sources and for RUN the build args it
sees. Metadata-only steps (ENV, CMD, LABEL …) add an empty layer and need no container; RUN runs
a container on the node's shim and turns its changes into a layer; COPY/ADD extract the selected
context files onto the build snapshot, resolved inside the image's filesystem.

Differences from dockerd's classic builder, on purpose: metadata steps do not create (and print)
an intermediate container, and ``--rm=false`` does not keep RUN containers around.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import posixpath
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from apiserver.build.context import BuildContext, Selected, TarBuffer
from apiserver.build.copy import Copier
from apiserver.build.dockerfile import Dockerfile, DockerfileError, Instruction, parse, parse_instruction
from apiserver.build.shell import Lexer
from apiserver.containers.views import rfc3339_nano
from apiserver.images.replicate import ImageReplicator
from apiserver.images.store import ImageRecord, ImageStore
from apiserver.networks.backend import NetworkBackend
from apiserver.nodes import HostServices, NodeDirectory
from protos.errors import BerthError, InvalidArgument, NotFound
from registry_client import reference
from shim.api import AttachInput, AttachOptions, ContainerSpec, NamespaceMode, ProcessSpec
from snapshotter.api import CommitResult, RegistryAuth

log = structlog.get_logger()

Message = dict[str, Any]
DEFAULT_SHELL = ["/bin/sh", "-c"]
# Build args Docker knows without an ARG (proxies), consumed silently.
BUILTIN_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy", "NO_PROXY",
                "no_proxy", "ALL_PROXY", "all_proxy")


class BuildFailed(BerthError):
    """A step failed; ``code`` is what the CLI exits with (a RUN's exit code, else 1)."""

    http_status = 400

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class BuildOptions:
    tags: tuple[str, ...] = ()
    dockerfile: str = "Dockerfile"
    build_args: dict[str, str | None] = field(default_factory=dict)
    target: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False
    pull: bool = False
    quiet: bool = False
    platform: str = ""
    auth: dict[str, RegistryAuth] = field(default_factory=dict)
    network: str = "default"  # RUN steps: default (the default bridge), host, or none (lo only)


@dataclass(slots=True)
class Stage:
    index: int
    name: str
    instructions: list[Instruction]
    image_id: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    chain_id: str = ""
    args: dict[str, str] = field(default_factory=dict)
    cmd_set: bool = False


def _host_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _now() -> str:
    return rfc3339_nano(time.time_ns())


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _chain(parent: str, diff_id: str) -> str:
    return diff_id if not parent else _sha(f"{parent} {diff_id}".encode())


def _split_stages(df: Dockerfile) -> tuple[list[Instruction], list[Stage]]:
    meta: list[Instruction] = []
    stages: list[Stage] = []
    for ins in df.instructions:
        if ins.cmd == "from":
            words = ins.rest.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else ""
            if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
                raise DockerfileError(f"dockerfile parse error on line {ins.line}: FROM requires either one or three "
                                      "arguments")
            stages.append(Stage(index=len(stages), name=name.lower(), instructions=[ins]))
        elif not stages:
            if ins.cmd != "arg":
                raise DockerfileError("no build stage in current context")
            meta.append(ins)
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise DockerfileError("no build stage in current context")
    return meta, stages


class Builder:
    """Runs one build. ``pull`` pulls a base image onto a node (the distribution backend's)."""

    def __init__(self, *, images: ImageStore, nodes: NodeDirectory, cache: BuildCache,
                 pull: Callable[[str, RegistryAuth], AsyncIterator[Message]],
                 networks: NetworkBackend | None = None) -> None:
        self._images = images
        self._networks = networks
        self._nodes = nodes
        self._replicator = ImageReplicator(images, nodes)
        self._cache = cache
        self._pull = pull
        self._node = ""
        self._host: HostServices | None = None
        self._ctx: BuildContext | None = None

    async def run(self, ctx: BuildContext, options: BuildOptions) -> AsyncIterator[Message]:
        if options.platform and options.platform.split("/")[0:2] != ["linux", _host_arch()][: len(
                options.platform.split("/")[0:2])]:
            raise InvalidArgument(f"platform {options.platform} is not supported: this builder builds "
                                  f"linux/{_host_arch()} only")
        self._ctx = ctx
        text = ctx.read(options.dockerfile).decode(errors="replace")
        ctx.apply_dockerignore()
        df = parse(text)
        lexer = Lexer(df.escape)
        meta, stages = _split_stages(df)
        meta_args: dict[str, str] = {}
        for ins in meta:
            for name, value in self._arg_defs(ins, lexer, meta_args):
                given = options.build_args.get(name)
                meta_args[name] = given if given is not None else (value or "")
        wanted = self._needed(stages, options.target, lexer, meta_args)
        if options.labels:
            # moby appends the build's --label set as a LABEL instruction (it shows as a step)
            text = "LABEL " + " ".join(f"{json.dumps(k)}='{v}'" for k, v in sorted(options.labels.items()))
            final = stages[max(wanted)]
            final.instructions.append(Instruction(cmd="label", rest=text[6:], original=text,
                                                  line=final.instructions[-1].line))
        total = sum(len(s.instructions) for s in stages if s.index in wanted)
        used_args: set[str] = set()
        step = 0
        last: Stage | None = None
        for stage in stages:
            if stage.index not in wanted:
                continue
            for ins in stage.instructions:
                step += 1
                if not options.quiet:
                    yield {"stream": f"Step {step}/{total} : {ins.original}\n"}
                async for message in self._dispatch(stage, stages, ins, lexer, meta_args, options, used_args):
                    if not options.quiet or "aux" in message:
                        yield message
                if not options.quiet:
                    yield {"stream": f" ---> {_short(stage.image_id)}\n"}
            last = stage
            if options.target and stage.name == options.target.lower():
                break
        assert last is not None
        if not last.image_id:
            raise BuildFailed("No image was generated. Is your Dockerfile empty?")
        unused = sorted(k for k in options.build_args if k not in used_args and k not in BUILTIN_ARGS
                        and k not in meta_args)
        if unused and not options.quiet:
            yield {"stream": f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed\n"}
        yield {"aux": {"ID": last.image_id}}
        if options.quiet:
            yield {"stream": f"{last.image_id}\n"}
        else:
            yield {"stream": f"Successfully built {_short(last.image_id)}\n"}
        for tag in options.tags:
            ref = reference.parse_tagged(tag)
            await self._images.tag(ref.canonical, last.image_id)
            if not options.quiet:
                yield {"stream": f"Successfully tagged {ref.familiar}\n"}

    # -- planning ----------------------------------------------------------------------------------
    def _arg_defs(self, ins: Instruction, lexer: Lexer, env: dict[str, str]) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        for word in lexer.process_words(ins.rest, env):
            name, sep, value = word.partition("=")
            if not name:
                raise DockerfileError(f"dockerfile parse error on line {ins.line}: ARG names can not be blank")
            out.append((name, value if sep else None))
        return out

    def _needed(self, stages: list[Stage], target: str, lexer: Lexer, meta_args: dict[str, str]) -> set[int]:
        """The target stage and the stages it depends on (FROM <stage>, COPY --from=<stage>)."""
        by_name = {s.name: s for s in stages if s.name}
        if target:
            if target.lower() not in by_name:
                raise InvalidArgument(f"failed to reach build target {target} in Dockerfile")
            end = by_name[target.lower()]
        else:
            end = stages[-1]

        def deps(stage: Stage) -> set[int]:
            found: set[int] = set()
            base = lexer.process_word(stage.instructions[0].rest.split()[0], meta_args).lower()
            for candidate in (base, *(i.flags.get("from", "").lower() for i in stage.instructions
                                      if i.cmd == "copy")):
                if candidate in by_name and by_name[candidate].index < stage.index:
                    found.add(by_name[candidate].index)
                elif candidate.isdigit() and int(candidate) < stage.index:
                    found.add(int(candidate))
            return found

        needed = {end.index}
        pending = [end]
        while pending:
            for index in deps(pending.pop()):
                if index not in needed:
                    needed.add(index)
                    pending.append(stages[index])
        return needed

    # -- images ------------------------------------------------------------------------------------
    async def _host_for(self, node: str) -> HostServices:
        if self._host is None or self._node != node:
            self._host = await self._nodes.host(node)
            self._node = node
        return self._host

    async def _save_image(self, stage: Stage, config: dict[str, Any], layers: list[dict[str, Any]],
                          chain_id: str, cache_key: str) -> None:
        raw = json.dumps(config, separators=(",", ":")).encode()
        host = await self._host_for(self._node)
        image_id = _sha(raw)

        async def body() -> AsyncIterator[bytes]:
            yield raw

        await host.content.write(body(), expected=image_id, size=len(raw))
        size = sum(int(layer.get("unpacked", layer.get("size", 0))) for layer in layers)
        record = ImageRecord(id=image_id, config=config, layers=layers, chain_id=chain_id, size=size,
                             raw_config=raw, parent=stage.image_id)
        await self._images.add(record, self._node, time.time_ns())
        await self._cache.put(cache_key, image_id)
        stage.image_id, stage.config, stage.layers, stage.chain_id = image_id, config, layers, chain_id

    async def _from_cache(self, stage: Stage, cache_key: str, options: BuildOptions) -> bool:
        if options.no_cache:
            return False
        image_id = await self._cache.get(cache_key)
        if not image_id:
            return False
        record = await self._images.find(image_id)
        if record is None or self._node not in record.nodes:
            return False
        stage.image_id, stage.config, stage.layers, stage.chain_id = (record.id, record.config, record.layers,
                                                                       record.chain_id)
        return True

    def _env(self, stage: Stage) -> dict[str, str]:
        env = dict(stage.args)
        for item in (stage.config.get("config") or {}).get("Env") or []:
            key, _, value = item.partition("=")
            env[key] = value
        return env

    def _next_config(self, stage: Stage, created_by: str, *, empty: bool) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(json.dumps(stage.config))
        config["created"] = _now()
        history = list(config.get("history") or [])
        entry: dict[str, Any] = {"created": config["created"], "created_by": created_by}
        if empty:
            entry["empty_layer"] = True
        history.append(entry)
        config["history"] = history
        config.setdefault("config", {})
        return config

    def _cache_key(self, stage: Stage, created_by: str) -> str:
        return hashlib.sha256(f"{stage.image_id}\n{created_by}".encode()).hexdigest()

    async def _metadata_step(self, stage: Stage, created_by: str, options: BuildOptions,
                             change: Callable[[dict[str, Any]], None]) -> AsyncIterator[Message]:
        """A step that only changes the config: ``change`` gets the ``config`` part (or, for
        MAINTAINER, the whole document through ``_next_config``'s result)."""
        key = self._cache_key(stage, created_by)
        if await self._from_cache(stage, key, options):
            yield {"stream": " ---> Using cache\n"}
            return
        doc = self._next_config(stage, created_by, empty=True)
        change(doc["config"])
        await self._save_image(stage, doc, stage.layers, stage.chain_id, key)

    # -- dispatch ----------------------------------------------------------------------------------
    async def _dispatch(self, stage: Stage, stages: list[Stage], ins: Instruction, lexer: Lexer,
                        meta_args: dict[str, str], options: BuildOptions, used: set[str]) -> AsyncIterator[Message]:
        env = self._env(stage)
        nop = "/bin/sh -c #(nop) "  # moby's two-argument comment form, hence the double space
        if ins.cmd == "from":
            async for m in self._from(stage, stages, ins, lexer, meta_args, options):
                yield m
            # The base image's ONBUILD triggers run now, as part of this step; they do not pass
            # on to images built from this one.
            config = stage.config.setdefault("config", {})
            triggers = list(config.get("OnBuild") or [])
            config["OnBuild"] = None
            if triggers:
                yield {"stream": f"# Executing {len(triggers)} build trigger{'s' if len(triggers) > 1 else ''}\n"}
            for trigger in triggers:
                trigger_ins = parse_instruction(ins.line, trigger)
                async for m in self._dispatch(stage, stages, trigger_ins, lexer, meta_args, options, used):
                    yield m
        elif ins.cmd == "arg":
            for name, default in self._arg_defs(ins, lexer, env):
                given = options.build_args.get(name)
                if given is not None:
                    used.add(name)
                value = given if given is not None else (default if default is not None else meta_args.get(name))
                if value is not None:
                    stage.args[name] = value
            async for m in self._metadata_step(stage, f"{nop} ARG {ins.rest}", options, lambda c: None):
                yield m
        elif ins.cmd in ("env", "label"):
            pairs = self._pairs(ins, lexer, env)

            def apply(config: dict[str, Any]) -> None:
                if ins.cmd == "env":
                    current = {e.split("=", 1)[0]: e for e in config.get("Env") or []}
                    for k, v in pairs:
                        current[k] = f"{k}={v}"
                    config["Env"] = list(current.values())
                else:
                    config["Labels"] = {**(config.get("Labels") or {}), **dict(pairs)}

            text = " ".join(f'{k}="{v}"' if ins.cmd == "label" else f"{k}={v}" for k, v in pairs)
            async for m in self._metadata_step(stage, f"{nop} {ins.keyword} {text}", options, apply):
                yield m
        elif ins.cmd in ("cmd", "entrypoint"):
            argv = list(ins.json_args) if ins.json_args is not None else [
                *((stage.config.get("config") or {}).get("Shell") or DEFAULT_SHELL), ins.rest]
            key = "Cmd" if ins.cmd == "cmd" else "Entrypoint"
            reset_cmd = ins.cmd == "entrypoint" and not stage.cmd_set
            if ins.cmd == "cmd":
                stage.cmd_set = True

            def apply(config: dict[str, Any]) -> None:
                config[key] = argv
                if reset_cmd:
                    config["Cmd"] = None

            async for m in self._metadata_step(stage, f"{nop} {ins.keyword} {json.dumps(argv)}", options, apply):
                yield m
        elif ins.cmd == "expose":
            ports = [p if "/" in p else f"{p}/tcp" for p in lexer.process_words(ins.rest, env)]

            def apply(config: dict[str, Any]) -> None:
                config["ExposedPorts"] = {**(config.get("ExposedPorts") or {}), **{p: {} for p in ports}}

            async for m in self._metadata_step(stage, f"{nop} EXPOSE {' '.join(ports)}", options, apply):
                yield m
        elif ins.cmd in ("user", "stopsignal"):
            value = lexer.process_word(ins.rest, env)
            key = "User" if ins.cmd == "user" else "StopSignal"

            def apply(config: dict[str, Any]) -> None:
                config[key] = value

            async for m in self._metadata_step(stage, f"{nop} {ins.keyword} {value}", options, apply):
                yield m
        elif ins.cmd == "volume":
            paths = list(ins.json_args) if ins.json_args is not None else lexer.process_words(ins.rest, env)
            if not paths or any(not p for p in paths):
                raise DockerfileError(f"dockerfile parse error on line {ins.line}: VOLUME specified can not be an "
                                      "empty string")

            def apply(config: dict[str, Any]) -> None:
                config["Volumes"] = {**(config.get("Volumes") or {}), **{p: {} for p in paths}}

            async for m in self._metadata_step(stage, f"{nop} VOLUME {json.dumps(paths)}", options, apply):
                yield m
        elif ins.cmd == "shell":
            if ins.json_args is None:
                raise DockerfileError(f"dockerfile parse error on line {ins.line}: SHELL requires the arguments "
                                      "to be in JSON form")
            shell = list(ins.json_args)

            def apply(config: dict[str, Any]) -> None:
                config["Shell"] = shell

            async for m in self._metadata_step(stage, f"{nop} SHELL {json.dumps(shell)}", options, apply):
                yield m
        elif ins.cmd == "onbuild":
            trigger = ins.rest.strip()
            if trigger.split(" ", 1)[0].upper() in ("ONBUILD", "FROM", "MAINTAINER"):
                raise DockerfileError(f"dockerfile parse error on line {ins.line}: "
                                      f"{trigger.split(' ', 1)[0].upper()} isn't allowed as an ONBUILD trigger")

            def apply(config: dict[str, Any]) -> None:
                config["OnBuild"] = [*(config.get("OnBuild") or []), trigger]

            async for m in self._metadata_step(stage, f"{nop} ONBUILD {trigger}", options, apply):
                yield m
        elif ins.cmd == "maintainer":
            stage.config["author"] = ins.rest  # top-level field, carried into the next image
            async for m in self._metadata_step(stage, f"{nop} MAINTAINER {ins.rest}", options, lambda c: None):
                yield m
        elif ins.cmd == "healthcheck":
            health = self._healthcheck(ins)

            def apply(config: dict[str, Any]) -> None:
                config["Healthcheck"] = health

            async for m in self._metadata_step(stage, f"{nop} HEALTHCHECK {json.dumps(health)}", options, apply):
                yield m
        elif ins.cmd == "workdir":
            async for m in self._workdir(stage, ins, lexer, env, options):
                yield m
        elif ins.cmd == "run":
            async for m in self._run(stage, ins, options, used):
                yield m
        elif ins.cmd in ("copy", "add"):
            async for m in self._copy(stage, stages, ins, lexer, env, options):
                yield m
        else:  # pragma: no cover - the parser only lets known instructions through
            raise DockerfileError(f"unknown instruction: {ins.keyword}")

    def _pairs(self, ins: Instruction, lexer: Lexer, env: dict[str, str]) -> list[tuple[str, str]]:
        words = lexer.process_words(ins.rest, env)
        if words and "=" not in words[0]:
            # legacy form: ENV key value with spaces (the rest, expanded as one word)
            key, _, rest = ins.rest.strip().partition(" ")
            if not rest.strip():
                raise DockerfileError(f"dockerfile parse error on line {ins.line}: {ins.keyword} must have two "
                                      "arguments")
            return [(lexer.process_word(key, env), lexer.process_word(rest.strip(), env))]
        out = []
        for word in words:
            key, _, value = word.partition("=")
            if not key:
                raise DockerfileError(f"dockerfile parse error on line {ins.line}: {ins.keyword} names can not "
                                      "be blank")
            out.append((key, value))
        return out

    def _healthcheck(self, ins: Instruction) -> dict[str, Any]:
        rest = ins.rest.strip()
        if rest.upper() == "NONE":
            return {"Test": ["NONE"]}
        word, _, args = rest.partition(" ")
        if word.upper() != "CMD":
            raise DockerfileError(f"dockerfile parse error on line {ins.line}: Unknown type \"{word}\" in "
                                  "HEALTHCHECK (try CMD)")
        json_args = None
        stripped = args.strip()
        if stripped.startswith("["):
            with contextlib.suppress(json.JSONDecodeError):
                parsed = json.loads(stripped)
                if isinstance(parsed, list):
                    json_args = parsed
        test = ["CMD", *json_args] if json_args is not None else ["CMD-SHELL", stripped]
        health: dict[str, Any] = {"Test": test}
        for flag, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod"),
                          ("start-interval", "StartInterval")):
            if flag in ins.flags:
                health[key] = _duration_ns(ins.flags[flag], flag)
        if "retries" in ins.flags:
            health["Retries"] = int(ins.flags["retries"])
        return health

    async def _from(self, stage: Stage, stages: list[Stage], ins: Instruction, lexer: Lexer,
                    meta_args: dict[str, str], options: BuildOptions) -> AsyncIterator[Message]:
        base = lexer.process_word(ins.rest.split()[0], meta_args)
        if ins.flags.get("platform"):
            platform = lexer.process_word(ins.flags["platform"], meta_args)
            if not platform.startswith(f"linux/{_host_arch()}") and platform not in ("linux",):
                raise InvalidArgument(f"platform {platform} is not supported by this builder")
        previous = next((s for s in stages if s.name and s.name == base.lower() and s.index < stage.index), None)
        if previous is None and base.isdigit() and int(base) < stage.index:
            previous = stages[int(base)]
        if previous is not None:
            stage.image_id, stage.config, stage.layers, stage.chain_id = (previous.image_id,
                                                                           json.loads(json.dumps(previous.config)),
                                                                           list(previous.layers), previous.chain_id)
        elif base.lower() == "scratch":
            stage.image_id, stage.layers, stage.chain_id = "", [], ""
            stage.config = {"architecture": _host_arch(), "os": "linux", "config": {},
                            "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
            if not self._node:
                node = await self._nodes.place(candidates=None, load=_no_load())
                self._node = node.id
        else:
            async for m in self._base_image(stage, base, options):
                yield m
        stage.args = {}
        stage.cmd_set = False

    async def _base_image(self, stage: Stage, base: str, options: BuildOptions) -> AsyncIterator[Message]:
        record = None if options.pull else await self._images.find(base)
        if record is None:
            ref = reference.parse_tagged(base)
            async for message in self._pull_image(base, options):
                yield message
            record = await self._images.find(ref.canonical)
            if record is None:
                raise NotFound(f"No such image: {ref.familiar}")
        if self._node:
            await self._replicator.ensure(record, self._node)  # a copy from a node that has it
        if not self._node:
            self._node = sorted(record.nodes)[0]
        stage.image_id, stage.config, stage.layers, stage.chain_id = (
            record.id, json.loads(json.dumps(record.config)), list(record.layers), record.chain_id)

    async def _workdir(self, stage: Stage, ins: Instruction, lexer: Lexer, env: dict[str, str],
                       options: BuildOptions) -> AsyncIterator[Message]:
        value = lexer.process_word(ins.rest, env)
        current = (stage.config.get("config") or {}).get("WorkingDir") or "/"
        path = posixpath.normpath(value if value.startswith("/") else posixpath.join(current, value))

        def apply(config: dict[str, Any]) -> None:
            config["WorkingDir"] = path

        # The directory itself is created when a RUN/COPY first needs it (the runtime creates a
        # missing working directory), so WORKDIR alone adds an empty layer.
        async for m in self._metadata_step(stage, f"/bin/sh -c #(nop) WORKDIR {path}", options, apply):
            yield m

    async def _copy(self, stage: Stage, stages: list[Stage], ins: Instruction, lexer: Lexer, env: dict[str, str],
                    options: BuildOptions) -> AsyncIterator[Message]:
        assert self._ctx is not None
        host = await self._host_for(self._node)
        copier = Copier(host.images, host.snapshots, self._ctx)
        from_chain: str | None = None
        from_ref = ""
        source = lexer.process_word(ins.flags.get("from", ""), env) if ins.cmd == "copy" else ""
        if source:
            named = next((s for s in stages if s.index < stage.index and (
                s.name == source.lower() or str(s.index) == source)), None)
            if named is not None:
                from_chain, from_ref = named.chain_id, named.image_id
            else:
                record = await self._images.find(source)
                if record is None:
                    async for message in self._pull_image(source, options):
                        yield message
                    record = await self._images.find(source)
                if record is None:
                    raise NotFound(f"invalid from flag value {source}: No such image: {source}")
                await self._replicator.ensure(record, self._node)
                from_chain, from_ref = record.chain_id, record.id
        workdir = (stage.config.get("config") or {}).get("WorkingDir") or "/"
        plan = await copier.plan(ins, lexer, env, workdir, from_chain, from_ref)
        key = self._cache_key(stage, plan.created_by)
        if await self._from_cache(stage, key, options):
            yield {"stream": " ---> Using cache\n"}
            return
        snapshot = f"build-{secrets.token_hex(16)}"
        await host.snapshots.prepare(snapshot, stage.chain_id, {"berth.build": "1"})
        try:
            await copier.execute(snapshot, plan)
            result = await host.images.commit_layer(snapshot, consume=True)
        except BaseException:
            with contextlib.suppress(BerthError):
                await host.snapshots.remove(snapshot)
            raise
        await self._save_layer_step(stage, plan.created_by, result, key)

    async def _save_layer_step(self, stage: Stage, created_by: str, result: CommitResult, key: str) -> None:
        new = self._next_config(stage, created_by, empty=result.layer is None)
        layers = list(stage.layers)
        if result.layer is not None:
            layers.append({"digest": result.layer.digest, "diff_id": result.layer.diff_id,
                           "media_type": result.layer.media_type, "size": result.layer.size})
            new.setdefault("rootfs", {"type": "layers", "diff_ids": []})
            new["rootfs"]["diff_ids"] = [*new["rootfs"].get("diff_ids", []), result.layer.diff_id]
        await self._save_image(stage, new, layers, result.chain_id, key)

    async def _pull_image(self, name: str, options: BuildOptions) -> AsyncIterator[Message]:
        ref = reference.parse_tagged(name)
        auth = options.auth.get(ref.domain) or options.auth.get(_index_key(ref.domain)) or RegistryAuth()
        async for message in self._pull(ref.canonical, auth):
            yield message

    async def _run(self, stage: Stage, ins: Instruction, options: BuildOptions,
                   used: set[str]) -> AsyncIterator[Message]:
        config = stage.config.get("config") or {}
        shell = config.get("Shell") or DEFAULT_SHELL
        argv = list(ins.json_args) if ins.json_args is not None else [*shell, ins.rest]
        # Build args are visible to RUN (and recorded in created_by as Docker does).
        visible = {k: v for k, v in stage.args.items()}
        for k in list(visible):
            if k in options.build_args:
                used.add(k)
        env_prefix = f"|{len(visible)} " + " ".join(f"{k}={v}" for k, v in sorted(visible.items())) + " " \
            if visible else ""
        created_by = env_prefix + " ".join(argv)
        key = self._cache_key(stage, created_by)
        if await self._from_cache(stage, key, options):
            yield {"stream": " ---> Using cache\n"}
            return
        host = await self._host_for(self._node)
        cid = secrets.token_hex(32)
        yield {"stream": f" ---> Running in {cid[:12]}\n"}
        mounts = await host.snapshots.prepare(f"build-{cid}", stage.chain_id, {"berth.build": "1"})
        env = list(config.get("Env") or [])
        names = {e.split("=", 1)[0] for e in env}
        env += [f"{k}={v}" for k, v in visible.items() if k not in names]
        if not any(e.startswith("PATH=") for e in env):
            env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        spec = ContainerSpec(id=cid, rootfs=tuple(mounts), hostname=cid[:12], process=ProcessSpec(
            args=tuple(argv), env=tuple(env), cwd=config.get("WorkingDir") or "/", user=config.get("User") or ""),
            network=NamespaceMode.HOST if options.network == "host" else NamespaceMode.PRIVATE)
        committed = False
        on_bridge = options.network == "default" and self._networks is not None
        try:
            if on_bridge:  # as the classic builder: RUN steps on the default bridge
                assert self._networks is not None
                spec = replace(spec, networking=await self._networks.attach_build_step(cid, self._node))
            await host.runtime.create(spec)
            try:
                output = aiter(host.runtime.attach(cid, AttachOptions(stdin=False), _no_stdin()))
                first = asyncio.ensure_future(anext(output, None))  # attached before the start
                try:
                    await host.runtime.start(cid)
                except BerthError as exc:
                    first.cancel()
                    raise BuildFailed(f"The command '{' '.join(argv)}' returned a non-zero code: 127: {exc}",
                                      127) from None
                item = await first
                while item is not None:
                    yield {"stream": item.data.decode(errors="replace")}
                    item = await anext(output, None)
                state = await host.runtime.wait(cid)
            finally:
                with contextlib.suppress(BerthError):
                    await host.runtime.delete(cid, force=True)
            if state.exit_code != 0:
                raise BuildFailed(f"The command '{' '.join(argv)}' returned a non-zero code: {state.exit_code}",
                                  state.exit_code)
            result = await host.images.commit_layer(f"build-{cid}", consume=True)
            committed = True
        finally:
            if on_bridge:
                assert self._networks is not None
                with contextlib.suppress(BerthError):
                    await self._networks.detach_build_step(cid)
            if not committed:
                with contextlib.suppress(BerthError):
                    await host.snapshots.remove(f"build-{cid}")
        yield {"stream": f" ---> Removed intermediate container {cid[:12]}\n"}
        await self._save_layer_step(stage, created_by, result, key)


async def _no_stdin() -> AsyncIterator[AttachInput]:
    return
    yield  # pragma: no cover


def _no_load() -> Any:
    from collections import Counter

    return Counter()


def _index_key(domain: str) -> str:
    return "https://index.docker.io/v1/" if domain == "docker.io" else domain


def _duration_ns(value: str, flag: str) -> int:
    """Go duration strings (``30s``, ``1m30s``, ``500ms``) in nanoseconds."""
    import re

    units = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
             "h": 3_600_000_000_000}
    total = 0.0
    matched = ""
    for number, unit in re.findall(r"([0-9.]+)(ns|us|µs|ms|s|m|h)", value):
        total += float(number) * units[unit]
        matched += number + unit
    if not value or matched != value:
        raise DockerfileError(f"time: invalid duration \"{value}\" for --{flag}")
    return int(total)


class BuildCache:
    """Cache keys (parent image + step) → image ids, in Redis so it survives restarts."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    async def get(self, key: str) -> str:
        value = await self._redis.get(f"{self._prefix}:{key}")
        return value.decode() if isinstance(value, bytes) else (value or "")

    async def put(self, key: str, image_id: str) -> None:
        await self._redis.set(f"{self._prefix}:{key}", image_id)


__all__ = ["BuildCache", "BuildFailed", "BuildOptions", "Builder", "Selected", "TarBuffer"]
