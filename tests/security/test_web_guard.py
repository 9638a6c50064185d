"""A web page in the user's browser cannot drive `sterling serve` (issue 17 item 7).

Each test is an attack a page on another site (or a DNS-rebinding page) could mount on the local
server, which signs with the chain's dev accounts, against the real app over a real market
(py-evm, a simulated enclave, sealed data); the client of `webworld.serve` is the user's own
browser, logged in with the tokened URL. Without the guard (web/guard.py) every refusal here is
a 200 or a 201: a cross-origin form published a listing as dev account 5.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))
from webworld import ORIGIN, PORT, TOKEN, Site, make_world, npz_bytes, serve, tabular

from sterling.web.app import create_app

FORM_ACCOUNT = 5  # the dev account the cross-origin form of the issue published as


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("guard")
    world = make_world(tmp)
    with serve(world, tmp / "static") as s:
        yield s
    world.chain.close()


def stranger(site: Site, base_url: str = ORIGIN) -> TestClient:
    """A client with no cookie, on the same app (a page of another site, or a script without the token)."""
    return TestClient(site.client.app, base_url=base_url)


def publish(client: TestClient, site: Site, headers: dict[str, str]):
    form = site.publish_form(account=FORM_ACCOUNT, name="planted by another site")
    upload = {"file": ("x.npz", npz_bytes(tabular(60, 7)))}
    return client.post("/api/provider/publish", data=form, files=upload, headers=headers)


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({"Origin": "http://evil.example"}, "Origin http://evil.example"),
        # same site as 127.0.0.1 is not, but localhost:3000 is localhost's site: the cookie goes along
        ({"Origin": "http://localhost:3000", "Host": f"localhost:{PORT}"}, "Origin http://localhost:3000"),
        ({"Origin": "null"}, "Origin null"),
        ({"Referer": "http://evil.example/form.html"}, "Referer http://evil.example/form.html"),
        ({"Sec-Fetch-Site": "cross-site"}, "another site (Sec-Fetch-Site: cross-site, with no Origin)"),
    ],
)
def test_a_cross_origin_form_post_publishes_nothing(site: Site, headers, named):
    listings, blobs = site.world.market.listing_count(), site.blobs()
    r = publish(site.client, site, headers)  # the user's browser, cookie and all
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error.startswith(f"refused: this POST comes from {named}")
    assert "not from this server's own pages" in error
    assert site.world.market.listing_count() == listings
    assert site.blobs() == blobs


def test_the_same_form_from_the_servers_own_page_publishes(site: Site):
    listings = site.world.market.listing_count()
    r = publish(site.client, site, {"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 201, r.text
    assert site.world.market.listing_count() == listings + 1


@pytest.mark.parametrize("host", ["evil.example", f"evil.example:{PORT}", "127.0.0.1:9999", "localhost"])
def test_a_foreign_host_header_is_refused(site: Site, host):
    """DNS rebinding: the page's own name resolves to 127.0.0.1, so the browser sends it as Host."""
    for method in ("GET", "POST"):
        r = site.client.request(method, "/api/status", headers={"Host": host})
        assert r.status_code == 400, (method, r.text)
        error = r.json()["error"]
        assert error.startswith(f"this server does not answer to the host '{host}'")
        assert f"127.0.0.1:{PORT}, localhost:{PORT}, [::1]:{PORT}" in error
        assert "--allow-remote" in error
    assert stranger(site).get("/static/index.html", headers={"Host": "evil.example"}).status_code == 400


def test_a_missing_token_is_refused_and_says_how_to_get_in(site: Site):
    client = stranger(site)
    for path in ("/api/status", "/api/listings", "/api/explorer/events", "/openapi.json"):
        r = client.get(path)
        assert r.status_code == 401, path
        assert r.json() == {
            "error": "this server needs its access token: open the URL `sterling serve` printed "
            f"({ORIGIN}/?token=...) in this browser, or send the header `Authorization: token <token>`",
            "field": None,
        }
    page = client.get("/", headers={"Accept": "text/html"})  # a browser opening the bare URL
    assert page.status_code == 401
    assert "<html" in page.text
    assert "/?token=..." in page.text
    assert client.get("/static/index.html").status_code == 200  # the assets stay public


@pytest.mark.parametrize("how", ["header", "cookie", "query", "other scheme"])
def test_a_wrong_token_is_refused(site: Site, how):
    client = stranger(site)
    wrong = TOKEN[:-1] + ("x" if TOKEN[-1] != "x" else "y")
    headers = {
        "header": {"Authorization": f"token {wrong}"},
        "cookie": {"Cookie": f"{site.client.app.state.guard.cookie}={wrong}"},
        "query": {},
        "other scheme": {"Authorization": f"Basic {TOKEN}"},
    }[how]
    path = "/api/status?token=" + (wrong if how == "query" else "")
    r = client.get(path, headers=headers)
    assert r.status_code == 401
    if how != "other scheme":
        assert r.json()["error"].startswith("the access token is wrong")
    assert client.get(f"/?token={wrong}").status_code == 401


def test_the_right_token_by_cookie_from_the_printed_url(site: Site):
    client = stranger(site)
    assert client.get("/api/status").status_code == 401
    login = client.get(f"/?token={TOKEN}&x=1", follow_redirects=False)
    assert login.status_code == 303
    assert login.headers["location"] == "/?x=1"  # the token leaves the address bar
    cookie = login.headers["set-cookie"]
    assert cookie.startswith(f"sterling_token_{PORT}={TOKEN};")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    assert client.get("/api/status").status_code == 200
    assert client.get("/api/status").json()["simulation"] is True
    assert client.get("/").status_code == 200


def test_the_right_token_by_header(site: Site):
    client = stranger(site)
    assert client.get("/api/listings").status_code == 401
    r = client.get("/api/listings", headers={"Authorization": f"token {TOKEN}"})
    assert r.status_code == 200
    assert isinstance(r.json()["items"], list)
    r = client.post(
        "/api/verify", json={"text": "{}", "account": 1}, headers={"Authorization": f"token {TOKEN}"}
    )
    assert r.status_code == 200  # a script: no Origin, no Sec-Fetch-Site, the token in a header


def test_allow_remote_admits_a_named_host(site: Site):
    name = "sterling.lan"
    for app, admitted in (
        (site.client.app, False),
        (create_app(site.context, static_dir=site.world.state / "static", token=TOKEN, port=PORT,
                    allowed_hosts=[name]), True),
    ):  # fmt: skip
        client = TestClient(
            app, base_url=f"http://{name}:{PORT}", headers={"Authorization": f"token {TOKEN}"}
        )
        r = client.get("/api/status")
        assert (r.status_code == 200) is admitted, r.text
        r = client.post(
            "/api/verify", json={"text": "{}", "account": 1}, headers={"Origin": f"http://{name}:{PORT}"}
        )
        assert (r.status_code == 200) is admitted, r.text
        if admitted:  # its own origin is the named one; loopback's is another origin there
            r = client.post("/api/verify", json={"text": "{}", "account": 1}, headers={"Origin": ORIGIN})
            assert r.status_code == 403
            assert client.get("/api/status", headers={"Host": "other.lan"}).status_code == 400


def test_responses_forbid_being_framed(site: Site):
    r = site.client.get("/")
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["content-security-policy"] == "frame-ancestors 'none'"
