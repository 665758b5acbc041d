"""The browser protections on every platform response: the page may run only its own files and
talk only to its own origin; API answers may run nothing; nothing is framed, sniffed or sent a
referrer. (test_platform_web_page.py shows the page still works under this policy.)"""

from __future__ import annotations

import re

import pytest

from conftest import PlatformUnderTest

COMMON = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def _directives(policy: str) -> dict[str, list[str]]:
    parts = [p.split() for p in policy.split(";") if p.strip()]
    return {p[0]: p[1:] for p in parts}


async def test_page_policy_allows_only_its_own_origin(platform: PlatformUnderTest) -> None:
    """GET / has a CSP with default-src 'self', no inline or eval script, no framing."""
    page = await platform.client.get("/", headers={"Authorization": ""})
    assert page.status_code == 200
    policy = _directives(page.headers["content-security-policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    assert not re.search(r"unsafe-|\*", page.headers["content-security-policy"])
    for name, value in COMMON.items():
        assert page.headers[name] == value
    # Nothing inline that the policy would refuse: the page only loads its own files.
    assert "<script>" not in page.text and "<style" not in page.text and " style=" not in page.text
    assert re.findall(r'<script src="([^"]+)"', page.text) == ["/web/app.js"]


@pytest.mark.parametrize(
    ("path", "token", "status"),
    [
        ("/api/v1/marketplace", True, 200),
        ("/api/v1/instances", False, 401),
        ("/api/v1/instances/nope", True, 404),
        ("/api/v1/healthz", False, 200),
        ("/api/v1/openapi.json", False, 200),
        ("/web/app.js", False, 200),
        ("/web/style.css", False, 200),
        ("/web/missing.js", False, 404),
    ],
)
async def test_api_answers_carry_the_strict_policy(
    platform: PlatformUnderTest, path: str, token: bool, status: int
) -> None:
    """Every non-page answer, errors and refusals included, allows nothing and cannot be framed."""
    headers = {} if token else {"Authorization": ""}
    r = await platform.client.get(path, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    for name, value in COMMON.items():
        assert r.headers[name] == value
    # The header is set once, not appended to by a second layer.
    assert len(r.headers.get_list("content-security-policy")) == 1
