"""The default route through the real token app and ImdsProxy to an upstream we control."""

import pytest
from aiohttp import web

from nmi.broker import MANAGED, BrokerPolicy, TokenBroker
from nmi.proxy import ImdsProxy
from nmi.readiness import DaemonState
from nmi.server import TokenServerConfig, token_app

from tests.core.doubles import Catalog, Pods, Tokens

BIG = b"x" * (3 * 1024 * 1024)


async def upstream_handler(request: web.Request) -> web.StreamResponse:
    if request.path == "/redirect":
        raise web.HTTPFound("/elsewhere")
    if request.path == "/big":
        return web.Response(body=BIG)
    body = await request.read()
    return web.json_response({"path": request.path, "query": request.query_string, "method": request.method,
                              "headers": {k: v for k, v in request.headers.items()}, "body_len": len(body)},
                             headers={"Connection": "close, X-Secret-Hop", "X-Secret-Hop": "1", "X-Kept": "yes"})


@pytest.fixture
async def client(aiohttp_server, aiohttp_client):
    upstream = web.Application()
    upstream.router.add_route("*", "/{tail:.*}", upstream_handler)
    server = await aiohttp_server(upstream)
    proxy = ImdsProxy("127.0.0.1", server.port, timeout=5)
    broker = TokenBroker(Pods(), Catalog(), Tokens(), policy=BrokerPolicy(mode=MANAGED, namespaced=True))
    app = token_app(broker, config=TokenServerConfig(block_instance_metadata=True), state=DaemonState(), proxy=proxy)
    app.on_cleanup.append(lambda _: proxy.close())
    return await aiohttp_client(app)


async def test_same_method_path_query_and_body_reach_imds(client):
    response = await client.post("/metadata/attested/document?api-version=2021-02-01&nonce=1",
                                 headers={"Metadata": "true"}, data=b"payload")
    echo = await response.json()
    assert response.status == 200
    assert (echo["method"], echo["path"], echo["query"], echo["body_len"]) == (
        "POST", "/metadata/attested/document", "api-version=2021-02-01&nonce=1", 7)


async def test_hop_by_hop_headers_are_stripped_both_ways(client):
    response = await client.get("/metadata/versions", headers={"Metadata": "true", "Connection": "X-Private",
                                                               "X-Private": "1", "Proxy-Authorization": "x",
                                                               "TE": "trailers", "X-End": "kept"})
    echo = await response.json()
    sent = {k.lower() for k in echo["headers"]}
    assert "x-private" not in sent and "proxy-authorization" not in sent and "te" not in sent
    assert "x-end" in sent and echo["headers"]["Host"].startswith("127.0.0.1:")
    assert "X-Secret-Hop" not in response.headers and response.headers["X-Kept"] == "yes"


async def test_redirects_are_passed_back_not_followed(client):
    response = await client.get("/redirect", headers={"Metadata": "true"}, allow_redirects=False)
    assert response.status == 302 and response.headers["Location"] == "/elsewhere"


async def test_large_bodies_are_streamed_through(client):
    response = await client.get("/big", headers={"Metadata": "true"})
    assert response.status == 200 and await response.read() == BIG


async def test_metadata_header_is_required_on_the_proxy_too(client):
    response = await client.get("/metadata/versions")
    assert response.status == 400 and (await response.json())["error"] == "invalid_request"


async def test_normalised_path_is_what_is_forwarded(client):
    response = await client.get("/metadata/./x/../versions", headers={"Metadata": "true"})
    assert (await response.json())["path"] == "/metadata/versions"


async def test_unreachable_imds_is_502_json(aiohttp_client):
    proxy = ImdsProxy("127.0.0.1", 9, timeout=2)  # discard port: nothing listens
    broker = TokenBroker(Pods(), Catalog(), Tokens(), policy=BrokerPolicy(mode=MANAGED, namespaced=True))
    client = await aiohttp_client(token_app(broker, config=TokenServerConfig(), state=DaemonState(), proxy=proxy))
    response = await client.get("/metadata/versions", headers={"Metadata": "true"})
    assert response.status == 502 and response.content_type == "application/json"
    assert (await response.json())["error"] == "bad_gateway"
    await proxy.close()


async def test_a_bug_answers_500_json_and_the_server_keeps_serving(aiohttp_client):
    class Broken(Tokens):
        async def get(self, identity, resource):
            raise RuntimeError("boom at 0xdeadbeef")

    from tests.core.doubles import binding, identity, pod
    catalog = Catalog(bound=[binding("b", "i", "s")], ids=[identity("i", "cid")])
    broker = TokenBroker(Pods(pod("p", "127.0.0.1", label="s")), catalog, Broken(),
                         policy=BrokerPolicy(mode=MANAGED, namespaced=True))
    proxy = ImdsProxy("127.0.0.1", 9)
    client = await aiohttp_client(token_app(broker, config=TokenServerConfig(), state=DaemonState(), proxy=proxy))
    for _ in range(2):
        response = await client.get("/metadata/identity/oauth2/token?resource=r", headers={"Metadata": "true"})
        body = await response.json()
        assert response.status == 500 and body["error"] == "internal_error"
        assert "boom" not in body["error_description"] and "0x" not in body["error_description"]
    await proxy.close()
