"""The host limits checked when ``turbok serve`` starts: one clear line per limit too low for the sandboxes."""

from __future__ import annotations

import dataclasses
import logging
import resource

import pytest

from tests.unit.node.conftest import machine
from turbok.node.hostlimits import check_host_limits, host_limits, raise_nofile, read_sysctl
from turbok.node.nodeinfo import pods_capacity

DEFAULTS = {"kernel.pid_max": 32_768, "kernel.threads-max": 190_000, "fs.inotify.max_user_watches": 8_192,
            "fs.inotify.max_user_instances": 128, "vm.max_map_count": 65_530}
RAISED = {"kernel.pid_max": 4_194_304, "kernel.threads-max": 4_194_304, "fs.inotify.max_user_watches": 524_288,
          "fs.inotify.max_user_instances": 512, "vm.max_map_count": 262_144}


def test_a_stock_kernel_gets_one_line_per_knob_with_its_value_what_is_wanted_and_the_command() -> None:
    found = host_limits(10_000, read=DEFAULTS.get, nofile=(1024, 4096))
    lines = {limit.knob: limit.line() for limit in found}
    assert set(lines) == {"kernel.pid_max", "kernel.threads-max", "fs.inotify.max_user_watches", "vm.max_map_count",
                          "RLIMIT_NOFILE"}
    # 10000 sandboxes x 60 tasks under 90% of pid_max, plus the rest of the machine
    assert lines["kernel.pid_max"] == ("kernel.pid_max is 32768, 10000 sandboxes want at least 670763: raise it with "
                                       "`sysctl -w kernel.pid_max=4194304` as root (scripts/setup.sh does)")
    assert "sysctl -w fs.inotify.max_user_watches=524288" in lines["fs.inotify.max_user_watches"]
    assert lines["vm.max_map_count"].startswith("vm.max_map_count is 65530, busy sandboxes (each Sentry's own mappings) want "
                                                 "at least 262144: ")
    assert lines["RLIMIT_NOFILE"].startswith("RLIMIT_NOFILE is 1024, 10000 sandboxes want at least 84096: ")
    assert "ulimit -n 1048576" in lines["RLIMIT_NOFILE"] and "hard limit 4096" in lines["RLIMIT_NOFILE"]


def test_a_machine_set_up_by_the_script_passes_and_few_sandboxes_need_little() -> None:
    assert host_limits(5000, read=RAISED.get, nofile=(1_048_576, 1_048_576)) == []
    small = host_limits(10, read=DEFAULTS.get, nofile=(1024, 1024))
    assert [limit.knob for limit in small] == ["vm.max_map_count", "RLIMIT_NOFILE"]  # per process, not per count
    assert host_limits(10, read=lambda knob: None, nofile=(resource.RLIM_INFINITY,) * 2) == []  # unreadable: silent


def test_the_wanted_count_is_what_memory_and_cpus_hold_not_what_pid_max_already_caps() -> None:
    small_pids = dataclasses.replace(machine(), memory_bytes=64 * 2**30, pid_max=32_768)
    assert pods_capacity(small_pids) < pods_capacity(small_pids, pids=False)
    assert [limit.knob for limit in host_limits(pods_capacity(small_pids, pids=False), read=DEFAULTS.get)
            if limit.knob == "kernel.pid_max"] == ["kernel.pid_max"]


def test_the_soft_open_files_limit_is_raised_to_the_hard_one_and_lines_are_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if before[1] != resource.RLIM_INFINITY and before[1] > 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, before[1]))
        soft, hard = raise_nofile()
        assert soft == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        with caplog.at_level(logging.WARNING, logger="turbok.node.hostlimits"):
            found = check_host_limits(10**6)  # more sandboxes than any machine's limits serve
        assert found and len(caplog.records) == len(found)
        assert all(r.getMessage().startswith("host limit: ") for r in caplog.records)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_read_sysctl_reads_proc_sys() -> None:
    value = read_sysctl("kernel.pid_max")
    assert value is None or value >= 301
    assert read_sysctl("no.such.knob") is None
