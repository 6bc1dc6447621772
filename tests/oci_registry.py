"""A real registry on loopback, and small OCI images built and pushed by the tests themselves.

``registry(tmp, auth=...)`` runs Debian's ``docker-registry`` (distribution 2.8,
installed by scripts/setup.sh) on 127.0.0.1 with a free port and its own
storage directory, anonymous, with ``htpasswd`` basic auth (``auth="basic"``,
the file made by apache2-utils' ``htpasswd -B``) or with bearer tokens
(``auth="token"``: a tiny token server this module runs on loopback signs RS256
JWTs with a throwaway key whose certificate the registry trusts). Nothing
leaves the machine.

``layer([...])`` makes a gzip'd layer tarball from ``Entry``s (files, dirs,
symlinks, hard links, whiteouts ``.wh.NAME``, opaque markers ``.wh..wh..opq``,
or anything ``tarfile`` can write, hostile ones included); ``image(layers,
config)`` makes the config and manifest; ``push(reg, repo, tag, img)`` uploads
the blobs and the manifest with the registry's HTTP API (monolithic uploads);
``push_index`` a multi-arch index of pushed manifests.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
USER, PASSWORD = "tester", "s3cret-pw"


def missing() -> str | None:
    """Why a registry cannot be run here, or None."""
    for tool, package in (("docker-registry", "docker-registry"), ("htpasswd", "apache2-utils")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package}; scripts/setup.sh does)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- images -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One tar member: ``kind`` file, dir, symlink, link (hard), or any ``tarfile`` type byte in ``raw``."""

    name: str
    kind: str = "file"
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    raw: bytes | None = None


def f(name: str, data: bytes | str = b"", mode: int = 0o644, **kw: Any) -> Entry:
    return Entry(name, "file", data.encode() if isinstance(data, str) else data, mode=mode, **kw)


def d(name: str, mode: int = 0o755) -> Entry:
    return Entry(name, "dir", mode=mode)


def sym(name: str, target: str) -> Entry:
    return Entry(name, "symlink", target=target, mode=0o777)


def whiteout(path: str) -> Entry:
    head, _, tail = path.rstrip("/").rpartition("/")
    return f(f"{head}/.wh.{tail}" if head else f".wh.{tail}")


def opaque(directory: str) -> Entry:
    return f(f"{directory.rstrip('/')}/.wh..wh..opq")


def layer_tar(entries: Sequence[Entry]) -> bytes:
    """The uncompressed tar of ``entries`` (in order)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, 1_700_000_000
            body = None
            if e.raw is not None:
                info.type = e.raw
                info.linkname = e.target
            elif e.kind == "file":
                info.size, body = len(e.data), io.BytesIO(e.data)
            elif e.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif e.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, e.target
            elif e.kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, e.target
            else:
                raise ValueError(e.kind)
            tar.addfile(info, body)
    return out.getvalue()


@dataclass
class Layer:
    blob: bytes  # gzip'd tar (zstd'd, or the tar itself, as media_type says)
    diff_id: str  # digest of the uncompressed tar
    media_type: str = LAYER

    @property
    def digest(self) -> str:
        return digest_of(self.blob)


def layer(entries: Sequence[Entry], *, level: int = 6, compression: str = "gzip") -> Layer:
    raw = layer_tar(entries)
    if compression == "zstd":
        import zstandard

        return Layer(zstandard.ZstdCompressor().compress(raw), digest_of(raw), LAYER.replace("gzip", "zstd"))
    if compression == "none":
        return Layer(raw, digest_of(raw), LAYER.removesuffix("+gzip"))
    return Layer(gzip.compress(raw, compresslevel=level, mtime=0), digest_of(raw))


def layer_from_tar_gz(path: Path) -> Layer:
    """A layer from a ``.tar.gz`` made elsewhere (the benchmark's, made with tar | gzip)."""
    blob = path.read_bytes()
    h = hashlib.sha256()
    with gzip.open(path, "rb") as g:
        while chunk := g.read(1 << 20):
            h.update(chunk)
    return Layer(blob, "sha256:" + h.hexdigest())


@dataclass
class Image:
    layers: list[Layer]
    config: bytes
    manifest: bytes
    extra_blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)

    @property
    def config_digest(self) -> str:
        return digest_of(self.config)

    @property
    def size(self) -> int:
        return sum(len(x.blob) for x in self.layers) + len(self.config)


def image(layers: Sequence[Layer], *, entrypoint: Sequence[str] | None = None, cmd: Sequence[str] | None = None,
          env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
          working_dir: str = "", user: str = "", arch: str = "amd64", os_: str = "linux",
          labels: dict[str, str] | None = None) -> Image:
    cfg: dict[str, Any] = {"Env": list(env)}
    if entrypoint is not None:
        cfg["Entrypoint"] = list(entrypoint)
    if cmd is not None:
        cfg["Cmd"] = list(cmd)
    if working_dir:
        cfg["WorkingDir"] = working_dir
    if user:
        cfg["User"] = user
    if labels:
        cfg["Labels"] = labels
    config = json.dumps({
        "architecture": arch, "os": os_, "created": "2024-01-01T00:00:00Z", "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": x.media_type, "digest": x.digest, "size": len(x.blob)} for x in layers],
    }, sort_keys=True).encode()
    return Image(list(layers), config, manifest)


# --- the registry -------------------------------------------------------------------------------


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    storage: Path
    auth: str  # "", "basic" or "token"
    token_url: str = ""
    log: Path = field(default_factory=Path)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def client(self, *, repo: str = "", push: bool = True) -> httpx.Client:
        """An HTTP client allowed to push to ``repo`` (or to read the catalog)."""
        headers = {}
        if self.auth == "basic":
            headers["Authorization"] = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        elif self.auth == "token":
            scope = f"repository:{repo}:pull,push" if repo else "registry:catalog:*"
            r = httpx.get(self.token_url, params={"service": "test-registry", "scope": scope},
                          auth=(USER, PASSWORD))
            r.raise_for_status()
            headers["Authorization"] = "Bearer " + r.json()["token"]
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def blob_path(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (to corrupt it in a test)."""
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def blob_gets(self) -> int:
        """How many blob GETs the registry answered so far (from its access log)."""
        return sum(1 for line in self.log.read_text(errors="replace").splitlines()
                   if '"GET /v2/' in line and "/blobs/sha256:" in line)

    def requests(self) -> int:
        return sum(1 for line in self.log.read_text(errors="replace").splitlines() if '"GET /v2/' in line
                   or '"HEAD /v2/' in line)


def push_blob(c: httpx.Client, repo: str, data: bytes) -> str:
    dg = digest_of(data)
    if c.head(f"/v2/{repo}/blobs/{dg}").status_code == 200:
        return dg
    r = c.post(f"/v2/{repo}/blobs/uploads/")
    r.raise_for_status()
    location = r.headers["Location"]
    sep = "&" if "?" in location else "?"
    r = c.put(f"{location}{sep}digest={dg}", content=data, headers={"Content-Type": "application/octet-stream"})
    r.raise_for_status()
    return dg


def push(reg: Registry, repo: str, ref: str, img: Image) -> str:
    """Push ``img`` as ``repo:ref``; returns the manifest digest."""
    with reg.client(repo=repo) as c:
        for x in img.layers:
            push_blob(c, repo, x.blob)
        for blob in img.extra_blobs.values():
            push_blob(c, repo, blob)
        push_blob(c, repo, img.config)
        r = c.put(f"/v2/{repo}/manifests/{ref}", content=img.manifest, headers={"Content-Type": MANIFEST})
        r.raise_for_status()
    return img.digest


def push_index(reg: Registry, repo: str, ref: str, platforms: Sequence[tuple[str, str, Image]]) -> str:
    """Push each image by digest and an index over them (``(os, arch, image)``); returns its digest."""
    for _os, _arch, img in platforms:
        push(reg, repo, img.digest, img)
    index = json.dumps({
        "schemaVersion": 2, "mediaType": INDEX,
        "manifests": [{"mediaType": MANIFEST, "digest": img.digest, "size": len(img.manifest),
                       "platform": {"os": o, "architecture": a}} for o, a, img in platforms],
    }).encode()
    with reg.client(repo=repo) as c:
        c.put(f"/v2/{repo}/manifests/{ref}", content=index, headers={"Content-Type": INDEX}).raise_for_status()
    return digest_of(index)


# --- the token server (bearer auth) -------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _TokenServer:
    """Docker's token protocol: GET ?service=&scope= with basic auth -> {"token": JWT}."""

    def __init__(self, work: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "turbok test token issuer")])
        now = time.time()
        import datetime

        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(datetime.datetime.fromtimestamp(now - 3600, datetime.UTC))
                .not_valid_after(datetime.datetime.fromtimestamp(now + 86400, datetime.UTC))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.bundle = work / "token-ca.pem"
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.issued = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                query = parse_qs(urlsplit(self.path).query)
                body = json.dumps({"token": server.token(query.get("service", [""])[0],
                                                         query.get("scope", []))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def token(self, service: str, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": "turbok-test-issuer", "sub": USER, "aud": service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        self.issued += 1
        return f"{signing}.{_b64url(sig)}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def registry(work: Path, *, auth: str = "") -> Iterator[Registry]:
    """Run docker-registry on loopback (``auth``: "", "basic" or "token") until the block ends."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    reg = Registry(host=f"127.0.0.1:{port}", storage=work / "storage", auth=auth, log=work / "registry.log")
    token_server = None
    auth_cfg = ""
    if auth == "basic":
        htpasswd = work / "htpasswd"
        subprocess.run(["htpasswd", "-Bbc", str(htpasswd), USER, PASSWORD], check=True, capture_output=True)
        auth_cfg = f"auth:\n  htpasswd:\n    realm: test-registry\n    path: {htpasswd}\n"
    elif auth == "token":
        token_server = _TokenServer(work)
        reg.token_url = token_server.url
        auth_cfg = (f"auth:\n  token:\n    realm: {token_server.url}\n    service: test-registry\n"
                    f"    issuer: turbok-test-issuer\n    rootcertbundle: {token_server.bundle}\n")
    elif auth:
        raise ValueError(auth)
    config = work / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {reg.storage}\n  delete:\n    enabled: true\n"
        f"  cache:\n    blobdescriptor: inmemory\nhttp:\n  addr: 127.0.0.1:{port}\n" + auth_cfg
    )
    with open(reg.log, "wb") as log:
        reg.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log,
                                    start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            if reg.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {reg.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{reg.url}/v2/", timeout=1).status_code in (200, 401):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not answer: {reg.log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield reg
    finally:
        reg.proc.terminate()
        try:
            reg.proc.wait(10)
        except subprocess.TimeoutExpired:
            reg.proc.kill()
            reg.proc.wait()
        if token_server is not None:
            token_server.stop()
