"""Settings from dicts, files, CheckpointConfiguration objects and an API server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from turbok.checkpoint.config import Settings, fetch_configuration, parse_duration, parse_quantity
from turbok.checkpoint.errors import ConfigError

DATA = Path(__file__).parents[2] / "data" / "checkpoint"
CRD = Path(__file__).parents[3] / "turbok" / "api" / "crds" / "checkpointing.turbok.dev_checkpointconfigurations.yaml"


def test_quantities_and_durations() -> None:
    assert parse_quantity("64Gi") == 64 << 30 and parse_quantity("1.5Mi") == 3 << 19 and parse_quantity("10G") == 10**10
    assert parse_quantity(123) == 123
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration(2) == 2
    for bad in ("10 GB", "-1Gi", "1m"):
        with pytest.raises(ConfigError):
            parse_quantity(bad)
    for bad in ("soon", "5 m", "m5"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_checkpoint_configuration_maps_to_settings() -> None:
    s = Settings.from_file(DATA / "checkpointconfiguration.yaml")
    assert s.storage_url == "s3://checkpoints/llm" and s.storage_options["endpoint"] == "http://127.0.0.1:9000"
    assert s.memory_size == 64 << 30 and s.replication_factor == 2
    assert s.backup_interval_s == 1800 and s.backup_every_steps == 1000
    assert (s.keep_memory, s.keep_disk, s.keep_object_last, s.keep_object_every) == (1, 3, 5, 10000)


def test_gke_shaped_configuration_is_understood() -> None:
    s = Settings.from_file(DATA / "gke_checkpointconfiguration.yaml")
    assert s.storage_url == "gs://my-bucket" and s.memory_size == 10 << 30


def test_flat_settings_and_overrides() -> None:
    base = Settings.from_dict({"memory_size": "1Gi", "peers": ["a:1"]})
    s = Settings.from_dict({"replication_factor": 0}, base)
    assert s.memory_size == 1 << 30 and s.peers == ["a:1"] and s.replication_factor == 0


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"memory_sise": "1Gi"}, "unknown checkpoint settings: memory_sise"),
        ({"kind": "Pod"}, "expected kind"),
        ({"memory_size": "lots"}, "not a byte quantity"),
        ({"kind": "CheckpointConfiguration", "spec": {"retention": {"localDisk": 0}}}, "at least one step"),
        ({"replication_factor": -1}, "must not be negative"),
    ],
)
def test_bad_settings_say_what_is_wrong(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_dict(doc)


def test_bad_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("spec: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Settings.from_file(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.from_file(tmp_path / "missing.yaml")


def _fields(schema: dict[str, object], doc: object, path: str = "") -> list[str]:
    """Paths in ``doc`` that the schema does not declare."""
    if not isinstance(doc, dict) or schema.get("type") != "object":
        if isinstance(doc, list) and isinstance(schema.get("items"), dict):
            return [p for i, d in enumerate(doc) for p in _fields(schema["items"], d, f"{path}[{i}]")]  # type: ignore[arg-type]
        return []
    props = schema.get("properties")
    if not isinstance(props, dict):
        return []
    out = []
    for k, v in doc.items():
        if k not in props:
            out.append(f"{path}.{k}")
        else:
            out += _fields(props[k], v, f"{path}.{k}")
    return out


def test_crd_is_cluster_scoped_and_declares_every_example_field() -> None:
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["group"] == "checkpointing.turbok.dev" and crd["spec"]["scope"] == "Cluster"
    assert crd["metadata"]["name"] == "checkpointconfigurations.checkpointing.turbok.dev"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1" and version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    assert "conditions" in schema["properties"]["status"]["properties"]
    for example in ("checkpointconfiguration.yaml", "gke_checkpointconfiguration.yaml"):
        doc = yaml.safe_load((DATA / example).read_text())
        assert _fields(schema, doc) == [], example
    # every spec field of the CRD is understood by the agent's settings (or documented as scheduler-only)
    spec_fields = set(schema["properties"]["spec"]["properties"])
    scheduling = {"nodeSelector", "tolerations", "image", "port", "hostNetwork", "tokenSecretRef"}  # operator.py
    assert spec_fields - scheduling <= {
        "storageURL", "cloudStorageBucketName", "storageOptions", "inMemoryVolumeSize", "inMemoryPath",
        "localDiskPath", "replicationFactor", "peers", "backupInterval", "backupEverySteps", "retention",
        "jobMemoryQuota", "diskQuota", "leaseTimeout",
    }


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[tuple[Path, dict[str, object]]]:
    obj = yaml.safe_load((DATA / "checkpointconfiguration.yaml").read_text())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.headers.get("Authorization") != "Bearer s3cret":
                self.send_response(401)
                self.end_headers()
                return
            if self.path == "/apis/checkpointing.turbok.dev/v1/checkpointconfigurations/training":
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "turbok",
        "clusters": [{"name": "turbok", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "admin", "user": {"token": "s3cret"}}],
        "contexts": [{"name": "turbok", "context": {"cluster": "turbok", "user": "admin"}}],
    }))
    yield kubeconfig, obj
    server.shutdown()
    server.server_close()


def test_configuration_is_read_from_an_api_server_with_the_kubeconfig_token(api_server: tuple[Path, dict[str, object]]) -> None:
    kubeconfig, obj = api_server
    s = Settings.from_dict(fetch_configuration("training", kubeconfig=kubeconfig))
    assert s.replication_factor == 2 and s.storage_url == "s3://checkpoints/llm"
    with pytest.raises(ConfigError, match="not found"):
        fetch_configuration("nope", kubeconfig=kubeconfig)


def test_an_unusable_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nowhere\ncontexts: []\nclusters: []\n")
    with pytest.raises(ConfigError, match="kubeconfig"):
        fetch_configuration("training", kubeconfig=broken)
    with pytest.raises(ConfigError, match="kubeconfig"):
        fetch_configuration("training", kubeconfig=tmp_path / "missing")
