"""The runsc binary and gVisor platform pods run with: the setting, and what binary and machine support.

``RunscSettings.from_env()`` reads ``TURBOK_RUNSC`` (a path, or a name looked up on PATH; default
``runsc``, Debian's package ``0.0~20221219``) and ``TURBOK_RUNSC_PLATFORM`` (``auto``, the default, or
``systrap``, ``ptrace``, ``kvm``). ``choose(settings)`` makes them a ``Runsc``: the binary's path and
version, the platform and why it was chosen, and the global flags every runsc command of the pod
runtime starts with (``--platform=...``, so the binary's own default never decides silently).

Detection runs once per binary per process (cached by path, size and mtime):

1. ``runsc --version`` gives the version; ``runsc flags`` the global flags the binary knows and,
   from the ``-platform`` help, its platforms (Debian's: "ptrace (default), kvm"; a current one:
   "systrap (default), ptrace, kvm"). A binary whose list cannot be read is taken to have ptrace only.
2. ``auto`` is systrap where the binary has it, else ptrace. Never kvm: on a virtual machine with a
   /dev/kvm (nested virtualization) runsc hangs at boot on it, both binaries alike.
3. An explicit platform must be one the binary lists; ``kvm`` besides needs /dev/kvm to open and a
   probe sandbox (``runsc do /bin/true``) to end within ``KVM_PROBE_SECONDS``; killed otherwise.

``other_binaries(state_dir, path)`` finds the sandboxes a previous start booted with another binary
(the executable of their sandbox process): runsc's state and control protocol are the binary's own,
so the factory warns at start that they must be stopped with that binary first.

A value that cannot be used is a ``SettingError`` naming the variable: the control plane refuses to
start with that one line. Callers: ``turbok.runtime.factory.make_pod_runtime`` (which logs
``Runsc.describe()`` at start) and ``GvisorPodRuntime`` (given no ``Runsc``, it chooses from the
settings: tests and benchmarks follow ``TURBOK_RUNSC`` that way). Blocking, and meant to be: it runs
at start-up, before anything is served (a few ms once the binary is cached; the kvm probe up to 10 s).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from turbok import settings
from turbok.runtime import mounts
from turbok.settings import SettingError

__all__ = [
    "DEFAULT_BINARY",
    "command_lines",
    "BinaryInfo",
    "KVM_PROBE_SECONDS",
    "NULL_NETNS",
    "PLATFORMS",
    "Runsc",
    "RunscSettings",
    "choose",
    "inspect_binary",
    "kvm_problem",
    "other_binaries",
    "parse_platforms",
]

DEFAULT_BINARY = "runsc"
#: What ``TURBOK_RUNSC_PLATFORM`` may say.
PLATFORMS = ("auto", "systrap", "ptrace", "kvm")
#: How long the kvm probe sandbox may take before it counts as hanging.
KVM_PROBE_SECONDS = 10.0
#: Where runsc (2024 on) pins the network namespace its gofers share, under ``--root``: a bind mount
#: belonging to no sandbox, which ``runsc delete`` leaves (``turbok.runtime.pods.release_root`` undoes it).
NULL_NETNS = "null-netns"

_PLATFORM_HELP = re.compile(r"platform to use: (?P<names>[^.]*)\.")
_FLAG = re.compile(r"^ {2}-([A-Za-z0-9][\w.-]*)", re.M)


@dataclasses.dataclass(frozen=True)
class RunscSettings:
    """Which runsc and platform (see the module docstring); ``from_env`` reads them."""

    binary: str = DEFAULT_BINARY
    platform: str = "auto"

    _ENV: ClassVar[dict[str, str]] = {"binary": "TURBOK_RUNSC", "platform": "TURBOK_RUNSC_PLATFORM"}

    def __post_init__(self) -> None:
        if not self.binary:
            raise SettingError("TURBOK_RUNSC: empty; name a runsc binary (default: runsc)")
        if self.platform not in PLATFORMS:
            raise SettingError(f"TURBOK_RUNSC_PLATFORM={self.platform!r}: not one of {', '.join(PLATFORMS)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **given: Any) -> RunscSettings:
        return settings.from_env(cls, cls._ENV, environ, **given)


@dataclasses.dataclass(frozen=True)
class BinaryInfo:
    """What one runsc binary says of itself: version, platforms (its default first), global flags."""

    path: str
    version: str
    platforms: tuple[str, ...]
    flags: frozenset[str]


@dataclasses.dataclass(frozen=True)
class Runsc:
    """The runsc a pod runtime runs: binary, version, platform (and why), the flags it knows."""

    path: str
    version: str
    platform: str
    reason: str
    platforms: tuple[str, ...] = ("ptrace",)
    flags: frozenset[str] = frozenset()

    def global_flags(self) -> tuple[str, ...]:
        """What every runsc command starts with (after the binary). ``--overlay2=none`` where the binary has
        it (2023 on, default ``root:self``): what a container writes to ``/`` goes to its overlay on the pod's
        disk, as with Debian's runsc, not into runsc's own overlay, where no turbok part would see it (the
        pod's layer, snapshots' files, a restart keeping the layer)."""
        return (f"--platform={self.platform}", *(("--overlay2=none",) if self.knows("overlay2") else ()))

    def knows(self, flag: str) -> bool:
        """Whether the binary has the global flag ``flag`` (its name, no dashes)."""
        return flag in self.flags

    def describe(self) -> str:
        """One line for the start-up log."""
        return f"pods run under gVisor: runsc {self.path} (version {self.version}), platform {self.platform} " \
               f"({self.reason})"


def _run(argv: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def parse_platforms(flags_text: str) -> tuple[str, ...]:
    """The platforms of ``runsc flags`` output, the binary's default first; () when not listed."""
    m = _PLATFORM_HELP.search(flags_text)
    if m is None:
        return ()
    names = [part.split()[0] for part in m.group("names").split(",") if part.split()]
    default = [part.split()[0] for part in m.group("names").split(",") if "(default)" in part]
    return tuple(dict.fromkeys(default + names))


def _key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return path, st.st_size, st.st_mtime_ns


def inspect_binary(path: str) -> BinaryInfo:
    """Version, platforms and flags of the runsc at ``path`` (cached while the file is unchanged);
    ``SettingError`` when it does not answer ``--version``."""
    return _inspect(_key(path))


@functools.lru_cache(maxsize=16)
def _inspect(key: tuple[str, int, int]) -> BinaryInfo:
    path = key[0]
    try:
        done = _run([path, "--version"])
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SettingError(f"TURBOK_RUNSC: {path} does not run ({e})") from None
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise SettingError(f"TURBOK_RUNSC: `{path} --version` failed (exit {done.returncode})"
                           f"{': ' + last[-1] if last else ''}")
    m = re.search(r"runsc version (\S+)", done.stdout)
    version = m.group(1) if m else "unknown"
    try:
        listed = _run([path, "flags"])
        text = listed.stdout + listed.stderr if listed.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    return BinaryInfo(path=path, version=version, platforms=parse_platforms(text) or ("ptrace",),
                      flags=frozenset(_FLAG.findall(text)))


def kvm_problem(info: BinaryInfo, timeout: float = KVM_PROBE_SECONDS) -> str | None:
    """Why the kvm platform cannot be used with this binary here, or None when a probe sandbox ran on it."""
    return _kvm_problem(_key(info.path), info.flags, timeout)


@functools.lru_cache(maxsize=16)
def _kvm_problem(key: tuple[str, int, int], flags: frozenset[str], timeout: float) -> str | None:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return f"/dev/kvm does not open ({e.strerror})"
    with tempfile.TemporaryDirectory(prefix="turbok-kvm-probe-") as tmp:
        state = Path(tmp) / "state"
        argv = [key[0], f"--root={state}", "--platform=kvm", "--network=none",
                *(["--ignore-cgroups"] if "ignore-cgroups" in flags else []), "do", "/bin/true"]
        with open(Path(tmp) / "err", "w+b") as err:  # a file: a hung sandbox would hold a pipe open
            # TMPDIR: ``runsc do`` (2024 on) pins a network namespace in a directory of its own under it, and
            # leaves that mount behind; here it is below ``tmp``, unmounted with the rest.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    cwd=tmp, start_new_session=True, env={**os.environ, "TMPDIR": tmp})
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return f"a probe sandbox on kvm did not finish in {timeout:g} s (a virtual machine's /dev/kvm?)"
            finally:
                _kill_all_with(f"--root={state}".encode())  # the sandbox and gofer: sessions of their own
                for pin in mounts.mounts_below(Path(tmp)):  # runsc's null-netns pins, its own and runsc do's
                    mounts.unmount(Path(pin))
            err.seek(0)
            lines = err.read().decode(errors="replace").strip().splitlines()
    if code != 0:
        return f"a probe sandbox on kvm failed (exit {code}){': ' + lines[-1] if lines else ''}"
    return None


def command_lines() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, argv) of every process whose command line can be read: how runsc's own processes and
    commands are found (by their ``--root``), none of them being this process's children for sure."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        yield int(entry.name), argv


def _kill_all_with(marker: bytes, wait: float = 5.0) -> None:
    """SIGKILL every process whose command line holds ``marker`` until none is left (or ``wait`` passed)."""
    deadline = time.monotonic() + wait
    while True:
        pids = [pid for pid, argv in command_lines() if any(marker in a for a in argv)]
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def choose(given: RunscSettings, *, kvm_probe_seconds: float = KVM_PROBE_SECONDS) -> Runsc:
    """The binary and platform of ``given``, checked against what the binary and machine support;
    ``SettingError`` (one line naming the variable) when they cannot be used."""
    path = shutil.which(given.binary)
    if path is None:
        raise SettingError(f"TURBOK_RUNSC={given.binary!r}: not found; install gVisor (apt-get install -y runsc) "
                           "or name a runsc binary")
    info = inspect_binary(os.path.abspath(path))
    wanted = given.platform
    if wanted == "auto":
        if "systrap" in info.platforms:
            platform, reason = "systrap", "auto: this runsc has systrap"
        elif "ptrace" in info.platforms:
            platform, reason = "ptrace", "auto: this runsc has no systrap"
        else:
            platform, reason = info.platforms[0], "auto: this runsc's default"
        reason += "; kvm is never chosen automatically"
    elif wanted not in info.platforms:
        raise SettingError(f"TURBOK_RUNSC_PLATFORM={wanted}: runsc {info.version} ({info.path}) has no such "
                           f"platform; it has {', '.join(info.platforms)}")
    elif wanted == "kvm" and (why := kvm_problem(info, kvm_probe_seconds)) is not None:
        raise SettingError(f"TURBOK_RUNSC_PLATFORM=kvm: {why}; use systrap or ptrace")
    else:
        platform, reason = wanted, "asked for" + (", and a probe sandbox ran on it" if wanted == "kvm" else "")
    return Runsc(path=info.path, version=info.version, platform=platform, reason=reason,
                 platforms=info.platforms, flags=info.flags)


def other_binaries(state_dir: Path, path: str) -> dict[str, str]:
    """{container id: executable} of the sandboxes registered in ``state_dir`` (runsc's ``--root``) whose
    sandbox process runs another binary than ``path``. Sandboxes that are gone are not listed."""
    found: dict[str, str] = {}
    try:
        states = [p for p in state_dir.iterdir() if p.name.endswith(".state")]
    except OSError:
        return found
    for state in states:
        try:
            data = json.loads(state.read_bytes())
            exe = os.readlink(f"/proc/{int(data['sandbox']['pid'])}/exe").removesuffix(" (deleted)")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if exe != path:
            found[str(data.get("id", state.name))] = exe
    return found
