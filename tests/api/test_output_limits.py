from __future__ import annotations

from ..support import ADMIN_TOKEN, auth
from .conftest import running_app


async def test_big_outputs_are_sent_to_the_raw_route() -> None:
    async with running_app(max_inline_output_bytes=10) as client:
        headers = {**auth(ADMIN_TOKEN), "X-Namespace": "big"}
        await client.put("/api/v1/namespaces/big", headers=headers)
        await client.post("/api/v1/jobs", json={"jobId": "j"}, headers=headers)
        await client.post("/api/v1/jobs/j/output", content=b"0123456789", headers=headers)
        r = await client.get("/api/v1/jobs/j/output", headers=headers)
        assert r.status_code == 200 and r.json()["encoding"] == "base64"
        await client.post("/api/v1/jobs/j/output", content=b"!", headers=headers)
        r = await client.get("/api/v1/jobs/j/output", headers=headers)
        assert r.status_code == 413
        problem = r.json()
        assert problem["type"] == "urn:aos:problem:output-too-large"
        assert problem["rawUrl"] == "/api/v1/namespaces/big/jobs/j/output/raw?version=1"
        raw = await client.get(problem["rawUrl"], headers=headers)
        assert raw.status_code == 200 and raw.content == b"0123456789!"


async def test_chunk_limit_is_configurable() -> None:
    async with running_app(max_chunk_bytes=4) as client:
        headers = {**auth(ADMIN_TOKEN), "X-Namespace": "small"}
        await client.put("/api/v1/namespaces/small", headers=headers)
        await client.post("/api/v1/jobs", json={"jobId": "j"}, headers=headers)
        assert (
            await client.post("/api/v1/jobs/j/output", content=b"1234", headers=headers)
        ).status_code == 201
        r = await client.post("/api/v1/jobs/j/output", content=b"12345", headers=headers)
        assert r.status_code == 413
        status = (await client.get("/api/v1/jobs/j/status", headers=headers)).json()
        assert status["lastSeq"] == 3
