"""The runsc setting: TURBOK_RUNSC / TURBOK_RUNSC_PLATFORM parsing, platform detection from what a binary
says of itself (stand-in binaries shaped like Debian's and a current runsc), and the factory's choices."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import pytest

from turbok.runtime.cri import Isolation
from turbok.runtime.factory import make_pod_runtime
from turbok.runtime.pods_gvisor import GvisorPodRuntime
from turbok.runtime.runsc import RunscSettings, choose, other_binaries, parse_platforms
from turbok.settings import SettingError

#: ``runsc flags`` of Debian's 0.0~20221219 and of the 2026-09-05 build (the ``-platform`` entry).
DEBIAN_FLAGS = """  -network value
    \tspecifies which network to use: sandbox (default), host, none. (default sandbox)
  -platform string
    \tspecifies which platform to use: ptrace (default), kvm. (default "ptrace")
"""
CURRENT_FLAGS = """  -gofer-network-namespace value
    \tnetwork namespace of the gofer (default null)
  -platform string
    \tspecifies which platform to use: systrap (default), ptrace, kvm. (default "systrap")
"""


def fake_runsc(tmp_path: Path, name: str, *, version: str = "0.0~20221219.0", flags: str = DEBIAN_FLAGS,
               version_exit: int = 0) -> str:
    """A script answering ``--version`` and ``flags`` like runsc (and 0 to anything else)."""
    (tmp_path / f"{name}.flags").write_text(flags)
    p = tmp_path / name
    p.write_text(f"""#!/bin/sh
case "$1" in
  --version) echo "runsc version {version}"; echo "spec: 1.0.2-dev"; exit {version_exit};;
  flags) cat "{tmp_path / f'{name}.flags'}";;
esac
exit 0
""")
    p.chmod(0o755)
    return str(p)


def test_settings_default_to_debians_runsc_on_auto() -> None:
    assert RunscSettings.from_env({}) == RunscSettings(binary="runsc", platform="auto")
    assert RunscSettings.from_env({"TURBOK_RUNSC": " /opt/runsc ", "TURBOK_RUNSC_PLATFORM": "ptrace"}) == \
        RunscSettings(binary="/opt/runsc", platform="ptrace")
    assert RunscSettings.from_env({"TURBOK_RUNSC": "  "}).binary == "runsc"  # empty: the default
    # An argument wins over the variable; None leaves the variable in charge.
    assert RunscSettings.from_env({"TURBOK_RUNSC_PLATFORM": "kvm"}, platform="systrap").platform == "systrap"
    assert RunscSettings.from_env({"TURBOK_RUNSC_PLATFORM": "kvm"}, platform=None).platform == "kvm"


@pytest.mark.parametrize("bad", ["gvisor", "KVM", "systrap,ptrace"])
def test_an_unknown_platform_is_one_line_naming_the_variable(bad: str) -> None:
    with pytest.raises(SettingError) as info:
        RunscSettings.from_env({"TURBOK_RUNSC_PLATFORM": bad})
    assert str(info.value) == f"TURBOK_RUNSC_PLATFORM={bad!r}: not one of auto, systrap, ptrace, kvm"


def test_platforms_come_from_runsc_flags_default_first() -> None:
    assert parse_platforms(DEBIAN_FLAGS) == ("ptrace", "kvm")
    assert parse_platforms(CURRENT_FLAGS) == ("systrap", "ptrace", "kvm")
    assert parse_platforms("flag provided but not defined: -flags") == ()


def test_auto_is_systrap_where_the_binary_has_it_else_ptrace(tmp_path: Path) -> None:
    old = choose(RunscSettings(binary=fake_runsc(tmp_path, "old")))
    assert (old.platform, old.version, old.platforms) == ("ptrace", "0.0~20221219.0", ("ptrace", "kvm"))
    assert old.global_flags() == ("--platform=ptrace",) and not old.knows("gofer-network-namespace")
    new = choose(RunscSettings(binary=fake_runsc(tmp_path, "new", version="0.0.0-2026", flags=CURRENT_FLAGS)))
    assert (new.platform, new.version) == ("systrap", "0.0.0-2026") and new.knows("gofer-network-namespace")
    assert "kvm is never chosen automatically" in new.describe()
    assert new.describe().startswith(f"pods run under gVisor: runsc {new.path} (version 0.0.0-2026), platform systrap")
    # A binary that lists no platforms (older still, or not runsc at all) gets ptrace.
    odd = choose(RunscSettings(binary=fake_runsc(tmp_path, "odd", flags="")))
    assert odd.platform == "ptrace"


def test_an_explicit_platform_must_be_one_the_binary_has(tmp_path: Path) -> None:
    old = fake_runsc(tmp_path, "old")
    assert choose(RunscSettings(binary=old, platform="ptrace")).reason == "asked for"
    with pytest.raises(SettingError, match=r"^TURBOK_RUNSC_PLATFORM=systrap: runsc 0.0~20221219.0 \(.*/old\) has "
                                           r"no such platform; it has ptrace, kvm$"):
        choose(RunscSettings(binary=old, platform="systrap"))


def test_a_binary_that_is_missing_or_broken_is_a_setting_error(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="TURBOK_RUNSC='/nowhere/runsc': not found"):
        choose(RunscSettings(binary="/nowhere/runsc"))
    with pytest.raises(SettingError, match=r"--version` failed \(exit 3\): spec: 1.0.2-dev"):
        choose(RunscSettings(binary=fake_runsc(tmp_path, "broken", version_exit=3)))


def test_the_pod_runtime_passes_the_platform_to_every_runsc_command(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    new = fake_runsc(tmp_path, "new", flags=CURRENT_FLAGS)
    monkeypatch.setenv("TURBOK_RUNSC", new)
    monkeypatch.delenv("TURBOK_RUNSC_PLATFORM", raising=False)
    rt = GvisorPodRuntime(tmp_path / "pods")  # from the environment, as tests and benchmarks build it
    assert rt._cmd("ps", "x") == [new, f"--root={tmp_path / 'pods' / '.runsc'}", "--platform=systrap", "ps", "x"]
    assert rt.version == "0.0~20221219.0"
    rt = GvisorPodRuntime(tmp_path / "pods", platform="ptrace")
    assert rt._cmd("ps")[2] == "--platform=ptrace" and rt.runsc_choice.reason == "asked for"
    monkeypatch.setenv("TURBOK_RUNSC_PLATFORM", "bogus")
    with pytest.raises(SettingError, match="TURBOK_RUNSC_PLATFORM='bogus'"):
        GvisorPodRuntime(tmp_path / "pods")


def test_the_factory_logs_its_choice_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TURBOK_RUNSC", fake_runsc(tmp_path, "new", version="9", flags=CURRENT_FLAGS))
    monkeypatch.delenv("TURBOK_RUNSC_PLATFORM", raising=False)
    with caplog.at_level(logging.INFO, logger="turbok.runtime"):
        rt = make_pod_runtime(tmp_path / "pods")
    assert rt.isolation is Isolation.GVISOR
    lines = [r.getMessage() for r in caplog.records if "runsc" in r.getMessage()]
    assert len(lines) == 1 and "(version 9), platform systrap" in lines[0], lines
    # A restart with another binary under sandboxes the first one booted: said at start.
    (tmp_path / "pods" / ".runsc").mkdir(parents=True)
    (tmp_path / "pods" / ".runsc" / "x_sandbox:x.state").write_text(json.dumps({"id": "x", "sandbox": {
        "pid": os.getpid()}}))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="turbok.runtime"):
        make_pod_runtime(tmp_path / "pods")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"1 sandbox(es) under {tmp_path / 'pods'} run on another runsc ({os.readlink('/proc/self/exe')}): this one "
        "cannot drive them; stop them with that TURBOK_RUNSC first (turbok down --stop-sandboxes)"]


def test_the_factory_refuses_a_chosen_runsc_that_does_not_work(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    bwrap = tmp_path / "bwrap"
    bwrap.write_text("#!/bin/sh\nexit 0\n")
    bwrap.chmod(0o755)
    # Named by the operator: a typo must not quietly drop gVisor for bubblewrap.
    monkeypatch.setenv("TURBOK_RUNSC", str(tmp_path / "typo"))
    with pytest.raises(SettingError, match=r"TURBOK_RUNSC='.*/typo': not found, or `--version` fails"):
        make_pod_runtime(tmp_path / "pods", bwrap=str(bwrap))
    monkeypatch.setenv("TURBOK_RUNSC", fake_runsc(tmp_path, "old"))
    monkeypatch.setenv("TURBOK_RUNSC_PLATFORM", "systrap")
    with pytest.raises(SettingError, match="has no such platform"):
        make_pod_runtime(tmp_path / "pods", bwrap=str(bwrap))


def test_sandboxes_booted_by_another_binary_are_found_by_their_process(tmp_path: Path) -> None:
    state = tmp_path / ".runsc"
    state.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])  # stands in for a sandbox process of another binary
    try:
        exe = os.readlink(f"/proc/{sleeper.pid}/exe")
        (state / "a_sandbox:a.state").write_text(json.dumps({"id": "a", "sandbox": {"pid": sleeper.pid}}))
        (state / "b_sandbox:b.state").write_text(json.dumps({"id": "b", "sandbox": {"pid": os.getpid()}}))
        (state / "c_sandbox:c.state").write_text("{not json")  # being rewritten by runsc
        assert other_binaries(state, os.readlink("/proc/self/exe")) == {"a": exe}
        assert other_binaries(state, exe) == {"b": os.readlink("/proc/self/exe")}
    finally:
        sleeper.kill()
        sleeper.wait()
    assert other_binaries(state, exe) == {"b": os.readlink("/proc/self/exe")}  # a is gone: not listed
    assert other_binaries(tmp_path / "absent", exe) == {}
