"""nftables through libnftables (in-process: no ``nft`` process per change) and the rulesets
Berth installs.

libnftables opens its netlink socket in the network namespace of the calling thread, so the
same call configures the host (from any thread) or a container (from a thread that has entered
its namespace). Every call is one atomic transaction.

Host ruleset (one table of Berth's own, ``ip <table>``; nothing outside it is touched): the
per-network facts live in sets and the published ports in two DNAT maps, so the chains never
change and the whole table is rebuilt atomically from the shim's state (``add``+``delete``+
definition in one transaction: no window without rules, established flows keep their conntrack
NAT)::

    prerouting/output (nat)  local destination → publish: DNAT by (addr, proto, port) maps
    postrouting (nat)        masquerade: subnets leaving by a non-Berth interface; 127.0.0.0/8
                             sources entering a bridge (route_localnet); DNATed hairpin flows
    forward (filter)         same bridge → accept (ICC); internal networks → drop;
                             DNATed (published) → accept; bridge → other bridge → drop
    input (filter)           new flows to 127.0.0.0/8 arriving on a bridge → drop (the
                             route_localnet guard; replies to 127.0.0.1 clients pass)
"""

from __future__ import annotations

import ctypes
import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from shim.network.api import BridgeNetwork

_OUTPUT_JSON = 1 << 4


class NftError(Exception):
    """libnftables refused a command; the message is its error text."""


class _Lib:
    _lock = threading.Lock()
    _lib: ctypes.CDLL | None = None

    @classmethod
    def get(cls) -> ctypes.CDLL:
        with cls._lock:
            if cls._lib is None:
                lib = ctypes.CDLL("libnftables.so.1")
                lib.nft_ctx_new.restype = ctypes.c_void_p
                lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
                lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
                lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
                lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
                lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
                cls._lib = lib
            return cls._lib


def run(commands: str, *, json_output: bool = False) -> str:
    """Run nft ``commands`` (one transaction) in the calling thread's network namespace.
    Blocking: call it from a worker thread."""
    lib = _Lib.get()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise NftError("nft_ctx_new failed")
    try:
        if json_output:
            lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        rc = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
    finally:
        lib.nft_ctx_free(ctx)
    if rc != 0:
        raise NftError(err.strip() or f"nft failed with {rc}")
    return out


def available() -> bool:
    try:
        _Lib.get()
    except OSError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Published:
    """One DNAT: ``host_ip`` "" or ``0.0.0.0`` means every local address."""

    protocol: str
    host_ip: str
    host_port: int
    address: str
    port: int


def _elements(items: Iterable[str]) -> str:
    listed = sorted(set(items))
    return f" elements = {{ {', '.join(listed)} }};" if listed else ""


def _q(name: str) -> str:
    return json.dumps(name)  # nft quotes interface names like JSON strings


def host_ruleset(table: str, networks: Sequence[BridgeNetwork], published: Sequence[Published]) -> str:
    """The whole host table, replacing any previous version atomically."""
    bridges = [_q(n.bridge) for n in networks]
    intra = [f"{_q(n.bridge)} . {_q(n.bridge)}" for n in networks if n.icc]
    hairpin = [f"{_q(n.bridge)} . {_q(n.bridge)}" for n in networks]
    internal = [_q(n.bridge) for n in networks if n.internal]
    masq = [n.subnet for n in networks if n.masquerade and not n.internal]
    any_addr = [f"{p.protocol} . {p.host_port} : {p.address} . {p.port}"
                for p in published if p.host_ip in ("", "0.0.0.0")]
    one_addr = [f"{p.host_ip} . {p.protocol} . {p.host_port} : {p.address} . {p.port}"
                for p in published if p.host_ip not in ("", "0.0.0.0")]
    return f"""add table ip {table}
delete table ip {table}
table ip {table} {{
  set bridges {{ type ifname;{_elements(bridges)} }}
  set intra {{ type ifname . ifname;{_elements(intra)} }}
  set hairpin {{ type ifname . ifname;{_elements(hairpin)} }}
  set internal {{ type ifname;{_elements(internal)} }}
  set masq {{ type ipv4_addr; flags interval;{_elements(masq)} }}
  map publish_any {{ type inet_proto . inet_service : ipv4_addr . inet_service;{_elements(any_addr)} }}
  map publish_ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service;{_elements(one_addr)} }}
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local jump publish
  }}
  chain output {{ type nat hook output priority -100; policy accept;
    fib daddr type local jump publish
  }}
  chain publish {{
    dnat ip to ip daddr . meta l4proto . th dport map @publish_ip
    dnat ip to meta l4proto . th dport map @publish_any
  }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    iifname . oifname @hairpin ct status dnat masquerade
    oifname @bridges ip saddr 127.0.0.0/8 masquerade
    ip saddr @masq oifname != @bridges masquerade
  }}
  chain forward {{ type filter hook forward priority filter; policy accept;
    iifname . oifname @intra accept
    iifname @internal drop
    oifname @internal drop
    ct status dnat accept
    iifname @bridges oifname @bridges drop
  }}
  chain input {{ type filter hook input priority filter; policy accept;
    iifname @bridges ip daddr 127.0.0.0/8 ct state != {{ established, related }} drop
  }}
}}
"""


def delete_table(table: str) -> str:
    return f"add table ip {table}\ndelete table ip {table}\n"


def table_exists(table: str) -> bool:
    out = run("list tables ip", json_output=True)
    data: Any = json.loads(out or "{}")
    return any(item.get("table", {}).get("name") == table for item in data.get("nftables", []))


# Inside a container's namespace: the embedded resolver listens on 127.0.0.11 at ports of its
# own choosing (so a server of the container's own can still bind :53), reached through DNAT.
DNS_TABLE = "berth_dns"
DNS_ADDRESS = "127.0.0.11"


def dns_ruleset(udp_port: int, tcp_port: int) -> str:
    return f"""add table ip {DNS_TABLE}
delete table ip {DNS_TABLE}
table ip {DNS_TABLE} {{
  chain output {{ type nat hook output priority -100; policy accept;
    ip daddr {DNS_ADDRESS} udp dport 53 dnat to {DNS_ADDRESS}:{udp_port}
    ip daddr {DNS_ADDRESS} tcp dport 53 dnat to {DNS_ADDRESS}:{tcp_port}
  }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    ip saddr {DNS_ADDRESS} udp sport {udp_port} snat to :53
    ip saddr {DNS_ADDRESS} tcp sport {tcp_port} snat to :53
  }}
}}
"""
