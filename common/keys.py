"""The Redis key layout: the contract between apiserver, shim and snapshotter processes.

Ownership (DESIGN.md §3): the apiserver writes configuration and desired state (``config``
fields, names, image index); the shim writes a container's runtime ``state`` field; each
snapshotter writes only its own node's snapshot metadata. All keys live under one namespace so
two Berths (or a test) can share a Redis server without meeting.

Container hash ``ctr:<id>``: ``config`` (JSON, apiserver), ``state`` (JSON of
``shim.api.ContainerState``, shim), ``node`` (node id), ``net`` (the shim's network state), and
``v``, a version stamp (:func:`version_stamp`) that every writer of ``config`` or ``state`` sets
anew in the same atomic write, so a reader that cached a record knows from ``v`` alone whether it
is still current. ``ctrs`` is a sorted set of ids scored by creation time in ns; ``names`` maps
``name`` (no slash) → id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    ns: str = "berth"

    # containers
    def container(self, id: str) -> str:
        return f"{self.ns}:ctr:{id}"

    @property
    def containers(self) -> str:
        return f"{self.ns}:ctrs"

    @property
    def containers_generation(self) -> str:
        """A counter every writer of a container hash (``config``, ``state``, ``net``) or of
        ``ctrs`` increments in the same atomic step: a reader that saw it unchanged knows that
        no container changed meanwhile."""
        return f"{self.ns}:ctrs:gen"

    @property
    def containers_lex(self) -> str:
        """Sorted set of ids, all scored 0, for ID-prefix lookups (ZRANGEBYLEX)."""
        return f"{self.ns}:ctrs:lex"

    def autoremove_claim(self, id: str) -> str:
        """Set NX by the one API server that removes an exited ``--rm`` container."""
        return f"{self.ns}:ctr:{id}:autoremove"

    @property
    def autoremove_queue(self) -> str:
        """List of exited ``--rm`` containers: the shim that saw the exit pushes the id, one API
        server pops it (BLPOP) and removes the container."""
        return f"{self.ns}:autoremove"

    @property
    def names(self) -> str:
        return f"{self.ns}:names"

    # exec sessions: hash exec:<id> (config JSON, apiserver; state JSON of shim.api.ExecState,
    # shim); ctr:<id>:execs is the set of the container's execs that have not exited (ExecIDs)
    def exec(self, id: str) -> str:
        return f"{self.ns}:exec:{id}"

    def container_execs(self, id: str) -> str:
        return f"{self.ns}:ctr:{id}:execs"

    # images: hash img:<id> (config JSON, layers, size, created, tags/digests as JSON lists)
    def image(self, id: str) -> str:
        return f"{self.ns}:img:{id}"

    def image_nodes(self, id: str) -> str:
        return f"{self.ns}:img:{id}:nodes"

    @property
    def images(self) -> str:
        return f"{self.ns}:imgs"

    @property
    def images_lex(self) -> str:
        return f"{self.ns}:imgs:lex"

    @property
    def tags(self) -> str:
        """Hash: normalised ``repo:tag`` → image id."""
        return f"{self.ns}:tags"

    @property
    def digests(self) -> str:
        """Hash: normalised ``repo@sha256:…`` → image id."""
        return f"{self.ns}:digests"

    # nodes: hash node id → JSON record; heartbeat keys expire
    @property
    def nodes(self) -> str:
        return f"{self.ns}:nodes"

    def heartbeat(self, node: str, part: str) -> str:
        return f"{self.ns}:node:{node}:hb:{part}"

    # A build's RUN step on the default bridge holds its address under this lease (string, with a
    # TTL), which the networks' orphan collection honours as it does a container record.
    def build_step(self, id: str) -> str:
        return f"{self.ns}:build:step:{id}"

    # networks: hash net:<id> (config JSON); nets / nets:lex as for containers; netnames maps
    # name → id; net:<id>:eps maps container id → endpoint JSON; net:<id>:ipam maps address →
    # owner (IPAM allocations, see apiserver/networks/store.py); subnets maps subnet → id.
    def network(self, id: str) -> str:
        return f"{self.ns}:net:{id}"

    @property
    def networks(self) -> str:
        return f"{self.ns}:nets"

    @property
    def networks_lex(self) -> str:
        return f"{self.ns}:nets:lex"

    @property
    def network_names(self) -> str:
        return f"{self.ns}:netnames"

    def network_endpoints(self, id: str) -> str:
        return f"{self.ns}:net:{id}:eps"

    def ipam(self, id: str) -> str:
        return f"{self.ns}:net:{id}:ipam"

    def ipam_cursor(self, id: str) -> str:
        return f"{self.ns}:net:{id}:ipam:next"

    @property
    def subnets(self) -> str:
        return f"{self.ns}:subnets"

    # volumes: hash vol:<name> (record JSON, node); vols is a sorted set of names scored by
    # creation time (ns); vol:<name>:refs is the set of container ids using the volume.
    def volume(self, name: str) -> str:
        return f"{self.ns}:vol:{name}"

    @property
    def volumes(self) -> str:
        return f"{self.ns}:vols"

    def volume_refs(self, name: str) -> str:
        return f"{self.ns}:vol:{name}:refs"

    # events: one capped stream
    @property
    def events(self) -> str:
        return f"{self.ns}:events"

    # snapshotter metadata, per node
    def snapshot(self, node: str, key: str) -> str:
        return f"{self.ns}:snap:{node}:s:{key}"

    def snapshot_index(self, node: str) -> str:
        """Set of every snapshot key/name on ``node``."""
        return f"{self.ns}:snap:{node}:keys"

    def snapshot_children(self, node: str, key: str) -> str:
        return f"{self.ns}:snap:{node}:children:{key}"

    def snapshot_seq(self, node: str) -> str:
        return f"{self.ns}:snap:{node}:seq"


def version_stamp() -> str:
    """A new value for a container hash's ``v`` field: random, so stamps never repeat across
    writers, processes or a record removed and created again under the same id."""
    return os.urandom(8).hex()


def text(value: object) -> str:
    """A Redis reply (bytes from redis-py without decode_responses) as str."""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)
