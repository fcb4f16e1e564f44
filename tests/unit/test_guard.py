"""The HTTP guard on a tiny FastAPI app (no Ray): auth, body-size and text limits."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from s3_ray.serving import Guard, GuardConfigError, read_token

TOKEN = "tok-" + "s3cr3t" * 4
ENV = "S3RAY_GUARD_TEST_TOKEN"


class Ask(BaseModel):
    question: str


def _app(guard: Guard) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/ask")
    async def ask(req: Ask) -> dict:
        if errors := guard.check_text([(("body", "question"), req.question)]):
            raise HTTPException(422, errors)
        return {"chars": len(req.question)}

    @app.post("/raw")
    async def raw(request: Request) -> dict:  # reads the body itself, as the retriever app does
        return {"bytes": len(await request.body())}

    return guard.install(app)


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv(ENV, TOKEN)
    guard = Guard.from_env(ENV, max_request_bytes=2048, max_text_chars=50)
    return TestClient(_app(guard))


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_auth_required_except_health(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    for headers in [{}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}]:
        r = client.post("/ask", json={"question": "q"}, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization" in r.json()["detail"]
    assert client.get("/openapi.json").status_code == 401
    r = client.post("/ask", json={"question": "q"}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"chars": 1}
    assert client.post("/ask", json={"question": "q"}, headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
    assert client.get("/openapi.json", headers=AUTH).status_code == 200


def test_body_limit_by_content_length_and_by_bytes_read(client: TestClient) -> None:
    assert client.post("/raw", content=b"x" * 2048, headers=AUTH).json() == {"bytes": 2048}
    r = client.post("/raw", content=b"x" * 2049, headers=AUTH)
    assert r.status_code == 413 and "2048 bytes" in r.json()["detail"] and "max_request_bytes" in r.json()["detail"]
    r = client.post("/ask", content=b'{"question": "' + b"y" * 4000 + b'"}', headers=AUTH)
    assert r.status_code == 413

    def chunks():  # no Content-Length: sent chunked, counted as it arrives
        for _ in range(5):
            yield b"z" * 1000

    for path in ("/raw", "/ask"):
        r = client.post(path, content=chunks(), headers=AUTH | {"Content-Type": "application/json"})
        assert r.status_code == 413, (path, r.text)
        assert "max_request_bytes" in r.json()["detail"]
    small = client.post("/raw", content=iter([b"a" * 1000, b"b" * 1000]), headers=AUTH)
    assert small.json() == {"bytes": 2000}
    bad = client.post("/raw", content=b"x", headers=AUTH | {"Content-Length": "lots"})
    assert bad.status_code == 400 and "Content-Length" in bad.json()["detail"]


def test_text_limit_names_the_field(client: TestClient) -> None:
    assert client.post("/ask", json={"question": "q" * 50}, headers=AUTH).status_code == 200
    r = client.post("/ask", json={"question": "q" * 51}, headers=AUTH)
    assert r.status_code == 422
    err = r.json()["detail"][0]
    assert err["loc"] == ["body", "question"] and "51 characters" in err["msg"] and "max_text_chars" in err["msg"]
    json_headers = AUTH | {"Content-Type": "application/json"}
    r = client.post("/ask", content=b'{"question": "a\\ud800"}', headers=json_headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "question"]
    # a lone surrogate echoed back in FastAPI's own 422 must not fail to encode (a 500)
    r = client.post("/ask", content=b'{"question": ["\\ud800"]}', headers=json_headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "question"]
    assert r.content.isascii()


def test_auth_off_leaves_everything_open() -> None:
    client = TestClient(_app(Guard(max_request_bytes=100, max_text_chars=10)))
    assert client.post("/ask", json={"question": "open"}).status_code == 200
    assert client.post("/raw", content=b"x" * 101).status_code == 413


def test_missing_or_bad_token_variable_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(GuardConfigError, match=ENV):
        Guard.from_env(ENV, 2048, 50)
    monkeypatch.setenv(ENV, "")
    with pytest.raises(GuardConfigError, match=f"\\${ENV} is unset or empty"):
        Guard.from_env(ENV, 2048, 50)
    monkeypatch.setenv(ENV, "short")
    with pytest.raises(GuardConfigError, match="at least 16"):
        Guard.from_env(ENV, 2048, 50)
    monkeypatch.setenv(ENV, "has a space in it, long enough")
    with pytest.raises(GuardConfigError, match="without spaces") as exc:
        read_token(ENV)
    assert "has a space" not in str(exc.value)
    assert Guard.from_env(None, 2048, 50).auth_enabled is False


def test_token_never_logged_or_echoed(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    responses = [client.post("/ask", json={"question": "q"}, headers=AUTH),
                 client.post("/ask", json={"question": "q"}, headers={"Authorization": f"Bearer {TOKEN}x"}),
                 client.post("/ask", json={"question": "q" * 99}, headers=AUTH),
                 client.post("/raw", content=b"x" * 4096, headers=AUTH)]
    assert [r.status_code for r in responses] == [200, 401, 422, 413]
    for r in responses:
        assert TOKEN not in r.text and all(TOKEN not in v for v in r.headers.values())
    guard = Guard.from_env(ENV, 2048, 50)
    assert guard.token == TOKEN and TOKEN not in repr(guard) and TOKEN not in str(guard)
    for record in caplog.records:
        assert TOKEN not in record.getMessage() and TOKEN not in repr(record.args)
