"""Replacing a namespace's settings is guarded by the version the client read (If-Match).

GET answers the version as ``ETag``; a PUT with ``If-Match`` of an older version is refused
with 412 and changes nothing, so two read-modify-write edits at once cannot lose one.
"""

from __future__ import annotations

import asyncio

from conftest import PlatformUnderTest


async def _create(platform: PlatformUnderTest, name: str) -> str:
    answer = await platform.client.post("/api/v1/namespaces", json={"name": name})
    assert answer.status_code == 201, answer.text
    read = await platform.client.get(f"/api/v1/namespaces/{name}")
    assert read.headers["etag"] == f'"{read.json()["updated_at"]}"'
    return read.headers["etag"]


async def test_put_with_a_stale_version_is_refused_with_412(platform: PlatformUnderTest) -> None:
    """The second writer of the same version gets 412 precondition_failed; the first stays."""
    version = await _create(platform, "edited")
    first = await platform.client.put(
        "/api/v1/namespaces/edited",
        json={"description": "first", "max_instances": 3},
        headers={"If-Match": version},
    )
    assert first.status_code == 200, first.text
    assert first.headers["etag"] != version
    second = await platform.client.put(
        "/api/v1/namespaces/edited",
        json={"description": "second"},
        headers={"If-Match": version},
    )
    assert second.status_code == 412, second.text
    assert second.json()["error"] == "precondition_failed"
    assert "changed by someone else" in second.json()["message"]
    now = (await platform.client.get("/api/v1/namespaces/edited")).json()
    assert (now["description"], now["max_instances"]) == ("first", 3)
    third = await platform.client.put(
        "/api/v1/namespaces/edited",
        json={"description": "third"},
        headers={"If-Match": first.headers["etag"]},
    )
    assert third.status_code == 200, third.text


async def test_concurrent_puts_of_one_version_let_exactly_one_through(
    platform: PlatformUnderTest,
) -> None:
    """Several writers at once with the version they all read: one 200, the rest 412."""
    version = await _create(platform, "raced")
    answers = await asyncio.gather(
        *(
            platform.client.put(
                "/api/v1/namespaces/raced",
                json={"description": f"writer {i}"},
                headers={"If-Match": version},
            )
            for i in range(5)
        )
    )
    assert sorted(a.status_code for a in answers) == [200, 412, 412, 412, 412]
    winner = next(a for a in answers if a.status_code == 200).json()["description"]
    now = (await platform.client.get("/api/v1/namespaces/raced")).json()
    assert now["description"] == winner


async def test_put_without_if_match_or_with_star_still_replaces(
    platform: PlatformUnderTest,
) -> None:
    """No If-Match (older clients) or ``*``: the replace happens as before."""
    await _create(platform, "plain")
    for headers in ({}, {"If-Match": "*"}):
        answer = await platform.client.put(
            "/api/v1/namespaces/plain", json={"description": str(headers)}, headers=headers
        )
        assert answer.status_code == 200, answer.text
