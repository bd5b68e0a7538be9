"""A minimal Docker registry token server for tests (``auth: token`` in distribution).

GET /token?service=…&scope=repository:NAME:ACTIONS with Basic credentials (or none, for
anonymous pulls of ``public/*``) returns a JWT signed RS256 by the key whose certificate the
registry trusts, carried in the ``x5c`` header. Signing uses the openssl CLI (test-only code).
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import subprocess
import time
from pathlib import Path

from aiohttp import web


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _cert_der(cert: Path) -> bytes:
    return subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER"], check=True,
                          capture_output=True).stdout


def sign(key: Path, cert_der: bytes, claims: dict[str, object]) -> str:
    header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(cert_der).decode()]}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=signing_input.encode(),
                               check=True, capture_output=True).stdout
    return f"{signing_input}.{_b64(signature)}"


def build(key: Path, cert: Path, users: dict[str, str]) -> web.Application:
    der = _cert_der(cert)

    async def token(request: web.Request) -> web.Response:
        user = ""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if users.get(name) != password:
                return web.json_response({"details": "incorrect username or password"}, status=401)
            user = name
        access = []
        for scope in request.query.getall("scope", []):
            for item in scope.split(" "):
                kind, _, rest = item.partition(":")
                name, _, actions = rest.rpartition(":")
                wanted = [a for a in actions.split(",") if a]
                granted = wanted if user else [a for a in wanted if a == "pull" and name.startswith("public/")]
                access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {"iss": "berth-test-issuer", "sub": user, "aud": request.query.get("service", ""),
                  "exp": now + 300, "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}
        return web.json_response({"token": sign(key, der, claims), "expires_in": 300})

    app = web.Application()
    app.router.add_get("/token", token)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--users", type=Path, required=True)
    args = p.parse_args()
    web.run_app(build(args.key, args.cert, json.loads(args.users.read_text())), host="127.0.0.1", port=args.port,
                print=None)


if __name__ == "__main__":
    main()
