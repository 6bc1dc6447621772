"""Finding the user's binaries and reading what they say, with stand-in binaries (shell scripts).

The real binaries are exercised by tests/integration/upgrade; these run everywhere.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from turbok.upgrade.assets import find_assets, probe_versions, read_help_facts
from turbok.upgrade.errors import AssetsError
from turbok.upgrade.versions import Version

HELP = """      --emulated-version strings   The versions different components emulate their capabilities (APIs, features, ...) of.
                                   Options are: kube=1.33..1.36(default:1.36)
      --min-compatibility-version strings   The min version of control plane components the server should be compatible with.
                                   Options are: kube=1.33..1.36(default:1.35)
"""


def _binary(path: Path, version: str) -> None:
    """A kube-apiserver stand-in: --version, --help, and flag validation as 1.36 does it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""#!/bin/sh
case "$1" in
  --version) echo "Kubernetes v{version}"; exit 0;;
  --help) cat <<'EOT'
{HELP}EOT
  exit 0;;
  --emulated-version=1.3[3-6]) echo 'E run.go:72] "command failed" err="[--etcd-servers must be specified]"' >&2; exit 1;;
  *) echo "E run.go:72] \\"command failed\\" err=\\"[emulation version ${{1#*=}} is not between [1.33, 1.36.3], --etcd-servers must be specified]\\"" >&2; exit 1;;
esac
""")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_unpack_layout_and_envtest_layout(tmp_path: Path) -> None:
    unpacked = tmp_path / "assets"
    _binary(unpacked / "1.36.3" / "kube-apiserver", "1.36.3")
    _binary(unpacked / "1.37.2" / "kube-apiserver", "1.37.2")
    (unpacked / "bin").mkdir()
    etcd = unpacked / "bin" / "etcd"
    etcd.write_text("#!/bin/sh\n")
    etcd.chmod(0o755)
    envtest = tmp_path / "envtest"
    _binary(envtest / "kube-apiserver", "1.35.4")
    found = find_assets([unpacked, envtest])
    assert sorted(str(v) for v in found.sets) == ["1.35.4", "1.36.3", "1.37.2"]
    assert found.etcd == etcd and found.sets[Version(1, 36, 3)].etcd == etcd
    assert found.get(Version(1, 37)).version == Version(1, 37, 2)  # a minor means its newest patch
    with pytest.raises(AssetsError, match=r"no kube-apiserver 1\.34\.0 among the binaries given \(found: 1\.35\.4, 1\.36\.3, 1\.37\.2\)"):
        found.get(Version(1, 34, 0))
    with pytest.raises(AssetsError, match="no kube-apiserver binary in"):
        find_assets([tmp_path / "assets" / "bin"])


def test_versions_come_from_the_binary_not_the_folder(tmp_path: Path) -> None:
    _binary(tmp_path / "1.99.0" / "kube-apiserver", "1.36.3")
    assert list(find_assets([tmp_path]).sets) == [Version(1, 36, 3)]


def test_help_facts_and_flag_probes(tmp_path: Path) -> None:
    binary = tmp_path / "kube-apiserver"
    _binary(binary, "1.36.3")
    facts = read_help_facts(binary)
    assert facts.emulated == (Version(1, 33), Version(1, 36)) and facts.min_compat == (Version(1, 33), Version(1, 36))
    assert facts.min_compat_default == Version(1, 35)
    assert probe_versions(binary, emulated=Version(1, 34)) == []
    assert probe_versions(binary, emulated=Version(1, 32)) == ["emulation version 1.32 is not between [1.33, 1.36.3]"]
