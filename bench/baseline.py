"""The baseline: a bare aiohttp server answering the token route with a fixed JSON body.

It does the least an IMDS look-alike must do (route, Metadata header check, JSON answer), so the ratio
nmi/baseline is what nmi's own work costs on top of aiohttp on this machine. Run as
`python -m bench.baseline --port P --body-size N`; `/readyz` answers 200 once it listens.
"""

from __future__ import annotations

import argparse
import json
import sys

from aiohttp import web

from nmi import __version__

from .loadgen import TOKEN_PATH

# nmi's (and IMDS's) exact answer to a request without the header, so both error paths send the same bytes.
MISSING_HEADER_BODY = '{"error":"invalid_request","error_description":"Required metadata header not specified"}'


def fixed_token_body(size: int) -> str:
    """A token-shaped JSON object of exactly `size` bytes (padding goes into the access token)."""
    template = {"access_token": "", "refresh_token": "", "expires_in": "3599", "expires_on": "1900000000",
                "not_before": "1899996400", "resource": "https://management.azure.com/", "token_type": "Bearer",
                "client_id": "bbbbbbbb-2222-4222-8222-bbbbbbbbbbbb"}
    empty = len(json.dumps(template, separators=(",", ":")))
    template["access_token"] = "x" * max(0, size - empty)
    return json.dumps(template, separators=(",", ":"))


def baseline_app(body_size: int) -> web.Application:
    # text= with application/json, as nmi answers, so both send the same headers (charset included).
    # nmi names itself in a Server header on its own answers; the baseline sends the same one.
    token_body = fixed_token_body(body_size)
    server = {"Server": f"nmi/{__version__}"}

    async def token(request: web.Request) -> web.Response:
        if request.headers.get("Metadata") != "true":
            return web.Response(text=MISSING_HEADER_BODY, status=400, content_type="application/json",
                                headers=server)
        return web.Response(text=token_body, content_type="application/json", headers=server)

    async def readyz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get(TOKEN_PATH, token)
    app.router.add_get("/readyz", readyz)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-size", type=int, default=1200)
    args = parser.parse_args(argv)
    web.run_app(baseline_app(args.body_size), host="127.0.0.1", port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
