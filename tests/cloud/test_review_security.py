"""Review page security (fleetloop_cloud.review.security) and the app's answers over real HTTP (no browser)."""

import http.client
import json

import pytest

from fleetloop_cloud.review import security
from fleetloop_cloud.review.app import create_app
from fleetloop_cloud.review.errors import Forbidden, ReviewError

from fixtures.review_page import ReviewServer


@pytest.mark.parametrize(
    "host, required",
    [
        ("127.0.0.1", False),
        ("::1", False),
        ("[::1]", False),
        ("localhost", False),
        ("127.0.0.2", True),
        ("0.0.0.0", True),
        ("192.168.1.20", True),
        ("::", True),
    ],
)
def test_only_the_default_loopback_addresses_go_without_a_token(host, required):
    assert security.requires_token(host) is required
    token, generated = security.resolve_token(host, None, environ={})
    assert (token is not None) is required and generated is required
    if required:
        assert len(token) >= 32


def test_a_configured_token_wins_and_must_be_long_enough():
    assert security.resolve_token("0.0.0.0", "c" * 20, environ={}) == ("c" * 20, False)
    assert security.resolve_token("127.0.0.1", None, environ={security.TOKEN_ENV: "e" * 16}) == ("e" * 16, False)
    with pytest.raises(ReviewError, match="at least 16 characters"):
        security.resolve_token("0.0.0.0", "short", environ={})
    assert security.token_matches("a" * 20, "a" * 20) and not security.token_matches("a" * 20, None)


@pytest.mark.parametrize(
    "header, allowed",
    [
        ("127.0.0.1:8080", True),
        ("localhost", True),
        ("[::1]:80", True),
        ("evil.example:8080", False),
        ("127.0.0.1.nip.io", False),
        (None, False),
    ],
)
def test_without_a_token_only_loopback_host_headers_are_served(header, allowed):
    if allowed:
        security.check_host(header, token_required=False)
    else:
        with pytest.raises(Forbidden, match="not served"):
            security.check_host(header, token_required=False)
    security.check_host(header, token_required=True)  # the token protects it instead


def test_cross_site_writes_are_refused():
    same = {"host": "127.0.0.1:8080", "origin": "http://127.0.0.1:8080", "sec-fetch-site": "same-origin"}
    security.check_same_origin(same)
    security.check_same_origin({"host": "127.0.0.1:8080"})  # no browser headers: CSRF token decides
    for headers, reason in (
        ({**same, "sec-fetch-site": "cross-site"}, "Sec-Fetch-Site"),
        ({**same, "origin": "http://evil.example"}, "not this page's host"),
        ({"host": "127.0.0.1:8080", "origin": "null"}, "Origin: null"),
        ({"host": "127.0.0.1:8080", "referer": "http://127.0.0.1:9999/x"}, "not this page's host"),
    ):
        with pytest.raises(Forbidden, match=reason):
            security.check_same_origin(headers)


def _request(server, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response, data


def test_http_sessions_cookies_rebinding_and_input_errors(review_world):
    world = review_world("waiting")
    with ReviewServer(create_app(world.pool_path, world.config)) as server:
        # DNS rebinding: a name that points at 127.0.0.1 is still not a loopback Host header
        response, body = _request(server, "GET", "/login", headers={"Host": f"attacker.example:{server.port}"})
        assert response.status == 403 and b"not served" in body
        response, body = _request(server, "GET", "/login")
        cookie = response.getheader("Set-Cookie")
        assert response.status == 200 and "HttpOnly" in cookie and "SameSite=strict" in cookie
        session = cookie.split(";")[0]
        csrf = body.decode().split('name="csrf-token" content="')[1].split('"')[0]
        # pages and data need a signed-in session
        assert _request(server, "GET", "/api/counters", headers={"Cookie": session})[0].status == 401
        assert _request(server, "GET", "/label", headers={"Cookie": session})[0].status == 303
        form = {"Cookie": session, "Content-Type": "application/x-www-form-urlencoded"}
        response, body = _request(server, "POST", "/login", f"annotator=a%20b&csrf={csrf}", form)
        assert response.status == 400 and b"letters, digits" in body
        response, _ = _request(server, "POST", "/login", "annotator=ann&csrf=wrong", form)
        assert response.status == 403
        for target in ("https://evil.example", "//evil", "/tuning/robots"):
            response, _ = _request(server, "POST", "/login", f"annotator=ann&csrf={csrf}&next={target}", form)
            expected = target if target == "/tuning/robots" else "/label"  # no open redirect
            assert response.status == 303 and response.getheader("Location") == expected
        api = {"Cookie": session, "X-CSRF-Token": csrf, "Content-Type": "application/json"}
        response, body = _request(server, "POST", "/api/next", "", api)
        item = json.loads(body)["item"]
        assert response.status == 200 and item["image_url"] == f"/frame/{item['frame_id']}.png"
        response, body = _request(server, "GET", item["image_url"], headers={"Cookie": session})
        assert response.status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"
        for bad in ("/frame/" + "g" * 64 + ".png", "/frame/" + "a" * 64 + ".png", "/frame/%2e%2e%2fpool.sqlite"):
            assert _request(server, "GET", bad, headers={"Cookie": session})[0].status == 404
        for payload, message in (
            ({"task_id": item["task_id"], "action": "label", "seconds": 1}, "label: required"),
            ({"task_id": item["task_id"], "action": "guess", "seconds": 1}, "action"),
            ({"task_id": 0, "action": "accept", "seconds": 1}, "task_id"),
            ({"task_id": item["task_id"], "action": "label", "label": 3, "seconds": -1}, "seconds"),
            ({"task_id": item["task_id"], "action": "label", "label": 3, "seconds": 1, "x": 1}, "x: Extra inputs"),
        ):
            response, body = _request(server, "POST", "/api/answer", json.dumps(payload), api)
            assert response.status in (400, 422) and message in json.loads(body)["error"], body
        response, body = _request(server, "POST", "/api/answer", "{not json", api)
        assert response.status == 422
        response, body = _request(server, "GET", "/tuning/routing?target=2", headers={"Cookie": session})
        assert response.status == 400 and b"must be &gt; 0.5 and &lt; 1" in body
        assert "default-src 'self'" in response.getheader("Content-Security-Policy")


def test_serve_is_an_action_of_the_review_command_which_still_runs_the_loop_step():
    from fleetloop_cloud.cli import build_parser
    from fleetloop_cloud.review import command

    parser = build_parser()
    serve = parser.parse_args(["review", "serve", "--host", "127.0.0.2", "--port", "8099"])
    assert serve.handler is command._serve and (serve.host, serve.port) == ("127.0.0.2", 8099)
    step = parser.parse_args(["review", "--config", "x.yaml"])
    assert step.handler is not command._serve and step.config == "x.yaml"
