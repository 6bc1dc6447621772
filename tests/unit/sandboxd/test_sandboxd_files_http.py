"""The files API over HTTP: shapes, streaming, limits, and traversal in every encoding."""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from conftest import Env


async def upload(env: Env, filename: str, data: bytes) -> httpx.Response:
    return await env.http.post("/upload", files={"file": (filename, data, "application/octet-stream")})


async def test_upload_download_list_exists_round_trip(env: Env) -> None:
    r = await upload(env, "data/deep/in.csv", b"a,b\n1,2\n")
    assert r.status_code == 200, r.text
    assert r.json()["message"] == "File 'data/deep/in.csv' uploaded successfully."
    assert (env.workdir / "data" / "deep" / "in.csv").read_bytes() == b"a,b\n1,2\n"

    r = await env.http.get("/download/data%2Fdeep%2Fin.csv")
    assert r.status_code == 200 and r.content == b"a,b\n1,2\n"
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Length"] == "8"

    r = await env.http.get("/list/data%2Fdeep")
    assert r.status_code == 200
    [entry] = r.json()
    assert entry["name"] == "in.csv" and entry["size"] == 8 and entry["type"] == "file"
    assert abs(entry["mod_time"] - os.stat(env.workdir / "data/deep/in.csv").st_mtime) < 1e-3

    r = await env.http.get("/list/")
    assert [(e["name"], e["type"]) for e in r.json()] == [("data", "directory")]

    assert (await env.http.get("/exists/data%2Fdeep%2Fin.csv")).json() == {
        "path": "data/deep/in.csv",
        "exists": True,
    }
    assert (await env.http.get("/exists/nope")).json() == {"path": "nope", "exists": False}


async def test_unencoded_slashes_and_app_prefix_work_too(env: Env) -> None:
    (env.workdir / "d").mkdir()
    (env.workdir / "d" / "x").write_bytes(b"x")
    assert (await env.http.get("/download/d/x")).content == b"x"
    assert (await env.http.get("/download/%2Fapp%2Fd%2Fx")).content == b"x"


async def test_missing_answers_404_json(env: Env) -> None:
    r = await env.http.get("/download/nope.txt")
    assert r.status_code == 404
    assert r.json() == {"message": "/app/nope.txt: no such file or directory", "reason": "NotFound"}
    r = await env.http.get("/list/nope")
    assert r.status_code == 404 and r.json()["reason"] == "NotFound"
    (env.workdir / "f").write_text("x")
    r = await env.http.get("/list/f")
    assert r.status_code == 404 and "not a directory" in r.json()["message"]
    r = await env.http.get("/download/")
    assert r.status_code == 404 and "is a directory" in r.json()["message"]


TRAVERSALS = [
    "../../../outside/secret.txt",
    "%2e%2e/%2e%2e/%2e%2e/outside/secret.txt",
    "%2E%2E%2F%2E%2E%2F%2E%2E%2Foutside%2Fsecret.txt",
    "..%2f..%2f..%2foutside%2fsecret.txt",
    "sub%2F..%2F..%2F..%2F..%2Foutside%2Fsecret.txt",
    "%2Fetc%2Fpasswd",
    "/etc/passwd",
    "%2F%2Fetc%2Fpasswd",
    "%2Fapp%2F..%2F..%2Fetc%2Fpasswd",
]


@pytest.mark.parametrize("endpoint", ["download", "list", "exists"])
@pytest.mark.parametrize("path", TRAVERSALS)
async def test_traversal_in_any_encoding_is_denied(
    env: Env, endpoint: str, path: str, tree: Any, raw_get: Any
) -> None:
    before = tree(env.outside.parent)
    status, body = await raw_get(f"/{endpoint}/{path}")
    assert status == 403, (path, body)
    assert json.loads(body)["message"].startswith("Access denied")
    assert tree(env.outside.parent) == before


async def test_double_encoding_is_a_name_not_a_traversal(env: Env) -> None:
    # Decoded exactly once: %252e%252e is the literal name "%2e%2e", which does not exist.
    r = await env.http.get("/download/%252e%252e%252f%252e%252e%252fetc%252fpasswd")
    assert r.status_code == 404, r.text
    (env.workdir / "%2e%2e").write_text("literal")
    assert (await env.http.get("/download/%252e%252e")).text == "literal"


@pytest.mark.parametrize("endpoint", ["download", "list", "exists"])
async def test_nul_byte_is_a_bad_request(env: Env, endpoint: str) -> None:
    r = await env.http.get(f"/{endpoint}/a%00..%2F..%2Fetc%2Fpasswd")
    assert r.status_code == 400 and "NUL" in r.json()["message"]


@pytest.mark.parametrize("link_target", ["ABS_OUTSIDE", "../../../outside"])
@pytest.mark.parametrize("endpoint", ["download", "list", "exists"])
async def test_symlinks_planted_by_the_sandbox_do_not_leak(env: Env, endpoint: str, link_target: str) -> None:
    target = str(env.outside) if link_target == "ABS_OUTSIDE" else link_target
    os.symlink(target, env.workdir / "escape")
    suffix = "" if endpoint == "list" else "%2Fsecret.txt"
    r = await env.http.get(f"/{endpoint}/escape{suffix}")
    assert r.status_code == 403, r.text
    assert "host secret" not in r.text


@pytest.mark.parametrize(
    "filename",
    ["../escape.txt", "../../../outside/new.txt", "/etc/turbok-test", "a/../../x", "lnk/new.txt", "lnk"],
)
async def test_upload_outside_is_denied_and_changes_nothing(env: Env, filename: str, tree: Any) -> None:
    os.symlink(env.outside, env.workdir / "lnk")
    (env.outside / "lnk").mkdir()  # so "lnk/new.txt" would land in outside/ if followed
    before = tree(env.outside.parent)
    r = await upload(env, filename, b"pwned")
    if filename == "lnk":
        # Writing over a link replaces the link itself (the target is untouched).
        assert r.status_code == 200
        assert (env.workdir / "lnk").read_bytes() == b"pwned"
        after = tree(env.outside.parent)
        assert {k: v for k, v in after.items() if "sandboxes" not in k} == {
            k: v for k, v in before.items() if "sandboxes" not in k
        }
        return
    assert r.status_code == 403, r.text
    assert r.json()["reason"] == "AccessDenied"
    assert tree(env.outside.parent) == before


async def test_upload_bad_requests(env: Env) -> None:
    r = await env.http.post("/upload", content=b"raw", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400 and "multipart" in r.json()["message"]
    r = await env.http.post("/upload", files={"other": ("x.txt", b"1")})
    assert r.status_code == 400 and "'file'" in r.json()["message"]
    r = await upload(env, "/app/", b"1")
    assert r.status_code == 400 and "work directory itself" in r.json()["message"]
    r = await upload(env, "bad\0name", b"1")  # sent as bad%00name, decoded back, refused
    assert r.status_code == 400 and "NUL" in r.json()["message"]
    assert list(env.workdir.iterdir()) == []


async def test_upload_over_a_directory_conflicts(env: Env) -> None:
    (env.workdir / "d").mkdir()
    r = await upload(env, "d", b"x")
    assert r.status_code == 409 and r.json()["reason"] == "Conflict"
    assert (env.workdir / "d").is_dir()
    assert [p.name for p in env.workdir.iterdir()] == ["d"]


@pytest.mark.parametrize("env", [{"upload_limit": 1000}], indirect=True)
async def test_upload_over_the_limit_is_413_and_keeps_the_old_file(env: Env) -> None:
    (env.workdir / "keep.txt").write_bytes(b"old")
    r = await upload(env, "keep.txt", b"z" * 1001)
    assert r.status_code == 413 and "1000 bytes" in r.json()["message"]
    assert (env.workdir / "keep.txt").read_bytes() == b"old"
    assert [p.name for p in env.workdir.iterdir()] == ["keep.txt"]  # no temp file left behind
    r = await upload(env, "keep.txt", b"z" * 1000)
    assert r.status_code == 200 and (env.workdir / "keep.txt").read_bytes() == b"z" * 1000


async def test_big_upload_and_download_stream(env: Env) -> None:
    data = os.urandom(8 * 1024 * 1024 + 17)
    r = await upload(env, "big.bin", data)
    assert r.status_code == 200 and r.json()["size"] == len(data)
    async with env.http.stream("GET", "/download/big.bin") as resp:
        assert resp.headers["Content-Length"] == str(len(data))
        got = b"".join([c async for c in resp.aiter_bytes()])
    assert got == data


async def test_concurrent_readers_never_see_half_an_upload(env: Env) -> None:
    (env.workdir / "f").write_bytes(b"A" * 1_000_000)
    seen: set[bytes] = set()

    async def reader() -> None:
        for _ in range(20):
            r = await env.http.get("/download/f")
            seen.add(bytes(set(r.content)))
            assert len(r.content) == 1_000_000

    await asyncio.gather(reader(), upload(env, "f", b"B" * 1_000_000), reader())
    assert seen <= {b"A", b"B"}
    assert (env.workdir / "f").read_bytes() == b"B" * 1_000_000


async def test_files_land_owned_by_the_workdir_owner(env: Env) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown (the router runs as root)")  # pragma: no cover
    os.chown(env.workdir, 1234, 1234)
    assert (await upload(env, "a/b.txt", b"x")).status_code == 200
    for p in (env.workdir / "a", env.workdir / "a" / "b.txt"):
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (1234, 1234)


async def test_list_has_the_upstream_shape(env: Env) -> None:
    (env.workdir / "d").mkdir()
    (env.workdir / "f.txt").write_bytes(b"12345")
    r = await env.http.get("/list/")
    body = sorted(r.json(), key=lambda e: e["name"])
    assert [set(e) for e in body] == [{"name", "size", "type", "mod_time"}] * 2
    assert [(e["name"], e["type"]) for e in body] == [("d", "directory"), ("f.txt", "file")]
    assert body[1]["size"] == 5


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('form-data; name="file"; filename="a;b.txt"', {"name": "file", "filename": "a;b.txt"}),
        ('form-data; name="file"; filename="/etc/passwd"', {"name": "file", "filename": "/etc/passwd"}),
        ('form-data; name="file"; filename="q%22uote.txt"', {"name": "file", "filename": 'q"uote.txt'}),
        ('form-data; name="file"; filename="q\\"uote\\\\.txt"', {"name": "file", "filename": 'q"uote\\.txt'}),
        ('form-data; name="file"; filename="nul%00.txt"', {"name": "file", "filename": "nul\0.txt"}),
        ("form-data; name=file; filename*=UTF-8''%C3%BC%2F..%2Fx", {"name": "file", "filename*": "ü/../x"}),
    ],
)
def test_content_disposition_parsing(header: str, expected: dict[str, str]) -> None:
    from turbok.sandboxd.files import disposition_params

    assert disposition_params(header) == expected


@pytest.mark.parametrize(
    "name", ['we"ird; name.txt', "back\\slash.txt", "ünï côdé.txt", "%41.txt", "/app/abs.txt"]
)
async def test_odd_filenames_round_trip(env: Env, name: str) -> None:
    assert (await upload(env, name, b"odd")).status_code == 200
    stored = name.removeprefix("/app/")
    assert (env.workdir / stored).read_bytes() == b"odd"
    from turbok.sdk.wire import quote_path

    assert (await env.http.get(f"/download/{quote_path(name)}")).content == b"odd"


async def test_names_that_are_not_utf8_still_work(env: Env) -> None:
    with open(os.path.join(os.fsencode(env.workdir), b"caf\xe9.txt"), "wb") as f:
        f.write(b"latin-1 name")
    r = await env.http.get("/download/caf%E9.txt")
    assert r.status_code == 200 and r.content == b"latin-1 name"
    assert "caf%E9.txt" in r.headers["Content-Disposition"]
    assert (await env.http.get("/exists/caf%E9.txt")).json()["exists"] is True
    assert [e["name"] for e in (await env.http.get("/list/")).json()] == ["caf\udce9.txt"]


@pytest.mark.parametrize("env", [{"upload_limit": 100_000}], indirect=True)
async def test_no_descriptor_leaks_on_any_path(env: Env) -> None:
    (env.workdir / "f").write_bytes(b"x" * 10)
    os.symlink("/etc", env.workdir / "etc")

    async def mixed() -> None:
        await upload(env, "a/b/c.txt", b"1")
        await upload(env, "big", b"z" * 100_001)  # 413
        await upload(env, "etc/x", b"1")  # 403
        await upload(env, "a", b"1")  # 409
        await env.http.get("/download/f")
        await env.http.get("/download/etc%2Fpasswd")
        await env.http.get("/download/missing")
        await env.http.get("/list/a")
        await env.http.get("/exists/etc%2Fshadow")

    await mixed()  # warm up: lazily opened descriptors (thread pool, connections)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(8):
        await mixed()
    assert len(os.listdir("/proc/self/fd")) <= before + 2


async def test_a_name_with_a_newline_is_served_like_any_other(env: Env) -> None:
    (env.workdir / "line\nbreak").write_bytes(b"odd")  # sandboxed code may name files so
    r = await env.http.get("/download/line%0Abreak")
    assert r.status_code == 200 and r.content == b"odd"
    assert (await env.http.get("/exists/line%0Abreak")).json()["exists"] is True
