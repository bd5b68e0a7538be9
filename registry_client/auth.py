"""Registry authentication: ``WWW-Authenticate`` challenges, Bearer tokens, Basic credentials.

The flow is distribution's: a request answered 401 carries a challenge. For ``Basic`` the
credentials go on every request; for ``Bearer`` a token is fetched from the challenge's
``realm`` (with ``service`` and ``scope``, and Basic credentials or a refresh token if we have
them) and cached per scope until it expires (60 s when the server does not say).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from dataclasses import dataclass

from protos.errors import InvalidArgument

DEFAULT_TOKEN_TTL = 60.0
_PARAM = re.compile(r'([a-zA-Z_][a-zA-Z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # an OAuth refresh token (docker login with a token server)
    registry_token: str = ""  # a bearer token to use as is

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)


ANONYMOUS = Credentials()


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "bearer" | "basic"
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` (possibly several challenges in one header)."""
    out: list[Challenge] = []
    rest = header.strip()
    while rest:
        m = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if not m:
            break
        scheme = m.group(1).lower()
        rest = rest[m.end():]
        params: dict[str, str] = {}
        while True:
            pm = _PARAM.match(rest)
            if not pm:
                break
            value = pm.group(2) if pm.group(2) is not None else pm.group(3)
            params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            rest = rest[pm.end():].lstrip()
            if rest.startswith(","):
                rest = rest[1:].lstrip()
                # a new challenge starts when the next token is followed by a space, not "="
                if re.match(r"[A-Za-z][A-Za-z0-9_-]*\s+[A-Za-z]", rest) \
                        or re.match(r"[A-Za-z][A-Za-z0-9_-]*\s*$", rest):
                    break
            else:
                break
        out.append(Challenge(scheme, params))
    return out


def decode_registry_auth(header: str | None) -> tuple[Credentials, str]:
    """Decode the CLI's ``X-Registry-Auth`` (base64url JSON); returns (credentials, server)."""
    if not header:
        return ANONYMOUS, ""
    padded = header + "=" * (-len(header) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded)
        doc = json.loads(raw or b"{}")
    except (binascii.Error, ValueError):
        raise InvalidArgument("invalid X-Registry-Auth header") from None
    if not isinstance(doc, dict):
        return ANONYMOUS, ""
    return Credentials(username=str(doc.get("username") or ""), password=str(doc.get("password") or ""),
                       identity_token=str(doc.get("identitytoken") or ""),
                       registry_token=str(doc.get("registrytoken") or "")), str(doc.get("serveraddress") or "")


def basic_header(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


@dataclass(slots=True)
class _Token:
    value: str
    expires: float


class TokenCache:
    """Bearer tokens per (account, realm, service, scope), valid until shortly before they expire.

    ``account`` keeps one caller's token from answering another caller's request: a client shared
    by many pulls must never hand user A's grant to user B (or to an anonymous pull)."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str, str], _Token] = {}

    def get(self, realm: str, service: str, scope: str, account: str = "") -> str | None:
        token = self._tokens.get((account, realm, service, scope))
        if token is None or token.expires <= time.monotonic():
            return None
        return token.value

    def put(self, realm: str, service: str, scope: str, value: str, expires_in: float | None,
            issued_at: float | None = None, account: str = "") -> None:
        ttl = expires_in if expires_in and expires_in > 0 else DEFAULT_TOKEN_TTL
        now = time.monotonic()
        for key in [k for k, t in self._tokens.items() if t.expires <= now]:
            del self._tokens[key]  # expired tokens of past callers must not accumulate
        # keep a margin so a token never expires on the wire
        self._tokens[(account, realm, service, scope)] = _Token(value, now + max(1.0, ttl - 5.0))


def account_key(creds: Credentials) -> str:
    """A stable, non-reversible name for a set of credentials ("" for anonymous)."""
    if creds.empty:
        return ""
    raw = "\0".join((creds.username, creds.password, creds.identity_token, creds.registry_token))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]
