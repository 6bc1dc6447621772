"""The user's own Kubernetes binaries: where they are, which version each is, what each accepts.

A rehearsal runs the binaries the user will install, so turbok never downloads
any. ``find_assets`` accepts directories laid out two ways:

* like ``unpack.sh``'s output: one folder per version (``DIR/1.36.3/kube-apiserver``,
  ``DIR/1.37.2/...``), etcd in a version folder or in ``DIR/bin``;
* like envtest's ``KUBEBUILDER_ASSETS``: the binaries of one version side by side.

Each kube-apiserver's version is read from the binary (``--version``), never
from the folder name. ``BinarySet.help_facts`` reads what the binary itself
says about KEP-4330: the ``--emulated-version`` and ``--min-compatibility-version``
ranges and the default min compatibility version, from ``--help``.

Called by the rehearsal and by the tests that compare the planner's tables with
the binaries. Runs the binaries with ``--version``/``--help`` only.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from turbok.upgrade.errors import AssetsError, VersionError
from turbok.upgrade.versions import Version, parse_version

__all__ = ["Assets", "BinarySet", "HelpFacts", "find_assets", "probe_versions", "read_help_facts"]

_VERSION_ERRORS = re.compile(r"((?:emulation|minCompatibilityVersion) version \S+ is not between \[[^\]]*\])")
_RANGE = re.compile(r"Options are:\s*kube=(\d+\.\d+)\.\.(\d+\.\d+)\s*\(default:\s*(\d+\.\d+)\)")


@dataclass(frozen=True)
class HelpFacts:
    """What ``kube-apiserver --help`` says: the emulation range and the min compatibility range and default."""

    emulated: tuple[Version, Version] | None
    min_compat: tuple[Version, Version] | None
    min_compat_default: Version | None


@dataclass(frozen=True)
class BinarySet:
    """kube-apiserver (and, when present, kube-controller-manager and kube-scheduler) of one version."""

    version: Version
    apiserver: Path
    controller_manager: Path | None
    scheduler: Path | None
    etcd: Path | None

    @functools.cached_property
    def help_facts(self) -> HelpFacts:
        return read_help_facts(self.apiserver)


@dataclass(frozen=True)
class Assets:
    """Every version found, and an etcd to run them on."""

    sets: dict[Version, BinarySet]
    etcd: Path | None

    def get(self, version: Version) -> BinarySet:
        """The binaries of exactly ``version``, or of the newest patch of its minor when no patch is given."""
        if version.patch is not None:
            found = self.sets.get(version)
        else:
            found = max((s for v, s in self.sets.items() if v.same_minor(version)), key=lambda s: s.version,
                        default=None)
        if found is None:
            have = ", ".join(str(v) for v in sorted(self.sets)) or "none"
            raise AssetsError(f"no kube-apiserver {version} among the binaries given (found: {have})")
        return found

    def minor(self, minor: Version) -> BinarySet | None:
        """The newest binaries of ``minor``'s minor, if any."""
        return max((s for v, s in self.sets.items() if v.same_minor(minor)), key=lambda s: s.version, default=None)


def _executable(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def _binary_version(apiserver: Path) -> Version:
    try:
        out = subprocess.run([str(apiserver), "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AssetsError(f"cannot run {apiserver} --version: {e}") from e
    m = re.search(r"Kubernetes\s+(v\S+)", out.stdout + out.stderr)
    if m is None:
        raise AssetsError(f"{apiserver} --version did not print a Kubernetes version: {out.stdout.strip()!r}")
    try:
        return parse_version(m.group(1), what=f"{apiserver} --version")
    except VersionError as e:
        raise AssetsError(str(e)) from e


def _set_in(folder: Path, fallback_etcd: Path | None) -> BinarySet | None:
    apiserver = folder / "kube-apiserver"
    if not _executable(apiserver):
        return None
    kcm, sched, etcd = (folder / n for n in ("kube-controller-manager", "kube-scheduler", "etcd"))
    return BinarySet(_binary_version(apiserver), apiserver, kcm if _executable(kcm) else None,
                     sched if _executable(sched) else None, etcd if _executable(etcd) else fallback_etcd)


def find_assets(dirs: Iterable[Path]) -> Assets:
    """Scan ``dirs`` (unpack.sh layout or envtest folders); raises ``AssetsError`` when none holds a kube-apiserver."""
    sets: dict[Version, BinarySet] = {}
    etcd: Path | None = None
    for d in dirs:
        d = d.expanduser()
        if not d.is_dir():
            raise AssetsError(f"--assets {d}: not a directory")
        shared_etcd = next((p for p in (d / "bin" / "etcd", d / "etcd") if _executable(p)), None)
        etcd = etcd or shared_etcd
        found = [_set_in(d, shared_etcd)]
        for sub in sorted(p for p in d.iterdir() if p.is_dir()):
            found.append(_set_in(sub, shared_etcd))
        for s in found:
            if s is not None:
                sets.setdefault(s.version, s)
                etcd = etcd or s.etcd
    if not sets:
        names = ", ".join(str(d) for d in dirs)
        raise AssetsError(f"no kube-apiserver binary in {names} (expected DIR/<version>/kube-apiserver, as unpack.sh "
                          "lays them out, or DIR/kube-apiserver like KUBEBUILDER_ASSETS)")
    return Assets(sets, etcd)


def _range(text: str, flag: str) -> tuple[tuple[Version, Version], Version] | None:
    """The ``Options are: kube=A..B(default:C)`` that follows ``flag`` in ``--help`` output."""
    at = text.find(f"--{flag} ")
    if at < 0:
        return None
    m = _RANGE.search(text, at, at + 1500)
    if m is None:
        return None
    return (parse_version(m.group(1)), parse_version(m.group(2))), parse_version(m.group(3))


def read_help_facts(apiserver: Path) -> HelpFacts:
    """The KEP-4330 ranges a kube-apiserver binary prints in ``--help`` (None where it has no such flag)."""
    try:
        out = subprocess.run([str(apiserver), "--help"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AssetsError(f"cannot run {apiserver} --help: {e}") from e
    text = out.stdout + out.stderr
    emu = _range(text, "emulated-version")
    mc = _range(text, "min-compatibility-version")
    return HelpFacts(emulated=emu[0] if emu else None, min_compat=mc[0] if mc else None,
                     min_compat_default=mc[1] if mc else None)


def probe_versions(apiserver: Path, *, emulated: Version, min_compat: Version | None = None) -> list[str]:
    """What ``apiserver`` says about ``--emulated-version``/``--min-compatibility-version`` values ([] = accepted).

    The binary validates its flags and exits at once (it has no etcd to talk to),
    listing every refusal, e.g. ``emulation version 1.33 is not between [1.34, 1.37.0]``.
    It runs in a fresh empty directory and writes nothing.
    """
    args = [str(apiserver), f"--emulated-version={emulated}"]
    if min_compat is not None:
        args.append(f"--min-compatibility-version={min_compat}")
    with tempfile.TemporaryDirectory(prefix="turbok-probe-") as d:
        try:
            out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False, cwd=d)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise AssetsError(f"cannot run {apiserver}: {e}") from e
    return [m.group(1) for m in _VERSION_ERRORS.finditer(out.stdout + out.stderr)]
