"""The systemd unit: systemd's own checks, and agreement with the code it runs.

`systemd-analyze verify` must have nothing to say and `systemd-analyze security` must rate
the unit's exposure at 2.0 or better; the ExecStart line must be a command line our CLI
accepts; the names the unit and the code share (credentials, socket directory, notify
protocol) must agree; the sysusers/tmpfiles snippets must do what the README says.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qtraderd.cli import build_parser
from qtraderd.control import client as ctl
from qtraderd.runtime import secrets
from tests.conftest import REPO

UNIT_DIR = REPO / "systemd"
UNIT = UNIT_DIR / "qtraderd.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


def directives(text: str | None = None) -> dict[str, list[str]]:
    """Directive -> every value it is given (a directive may repeat), comments skipped."""
    out: dict[str, list[str]] = {}
    for line in (UNIT.read_text() if text is None else text).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def exec_start() -> list[str]:
    return shlex.split(directives()["ExecStart"][0])


@needs_analyze
def test_security_exposure_is_at_most_2(tmp_path):
    out = subprocess.run([ANALYZE, "security", "--offline=true", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for qtraderd\.service: (\d+\.\d+)", out.stdout)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= 2.0, out.stdout


@needs_analyze
def test_verify_has_nothing_to_say(tmp_path):
    """The unit as shipped, except that ExecStart points at this checkout's installed
    `qtraderd` entry point instead of /opt/qtraderd (verify checks the binary exists)."""
    exe = Path(sys.executable).parent / "qtraderd"
    assert exe.exists(), f"{exe}: install the package (pip install -e .)"
    text = UNIT.read_text()
    shipped = exec_start()[0]
    assert shipped == "/opt/qtraderd/.venv/bin/qtraderd"
    assert text.count(f"ExecStart={shipped} ") == 1
    copy = tmp_path / "qtraderd.service"
    copy.write_text(text.replace(f"ExecStart={shipped} ", f"ExecStart={exe} "))
    out = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True,
                         timeout=60)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")
    # and verify does notice a broken unit (the check is not vacuous)
    copy.write_text(text.replace("Type=notify", "Type=notfy"))
    out = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout + out.stderr


def test_exec_start_is_a_command_line_our_cli_accepts():
    argv = exec_start()
    assert argv[1] == "run"
    env = {"STATE_DIRECTORY": "/var/lib/qtraderd", "CONFIGURATION_DIRECTORY": "/etc/qtraderd"}
    expanded = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], a) for a in argv[1:]]
    args = build_parser().parse_args(expanded)
    assert args.command == "run"
    assert args.state_dir == Path("/var/lib/qtraderd")
    assert args.models_dir == Path("/var/lib/qtraderd/models")
    assert args.config == Path("/etc/qtraderd/qtraderd.toml")
    help_text = subprocess.run([sys.executable, "-m", "qtraderd", "run", "--help"],
                               capture_output=True, text=True, cwd=REPO).stdout
    for opt in (a for a in argv if a.startswith("--")):
        assert opt in help_text, f"`qtraderd run --help` does not list {opt}"


def test_the_unit_and_the_code_agree_on_names_and_protocols():
    d = directives()
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # the daemon reloads on SIGHUP
    assert d["Restart"] == ["on-failure"] and d["RestartSec"] and d["WatchdogSec"]
    assert d["StartLimitIntervalSec"] and d["StartLimitBurst"]
    assert "2" in d["RestartPreventExitStatus"][0].split()  # bad config: restarting is futile
    # credentials: the names the secrets module reads from $CREDENTIALS_DIRECTORY
    creds = {v.split(":", 1)[0] for v in d["LoadCredential"]}
    assert creds == {secrets.KEY_FILE, secrets.SECRET_FILE}
    # the socket: $RUNTIME_DIRECTORY is /run/<RuntimeDirectory>, where ctl looks for it
    assert ctl.SYSTEMD_SOCKET.parent == Path("/run") / d["RuntimeDirectory"][0]
    assert d["StateDirectory"] == ["qtraderd"] and d["User"] == ["qtraderd"]


def test_a_live_feed_starts_after_the_network_is_online():
    """The Binance feed's start-up calls the exchange: the unit waits for the network."""
    d = directives()
    assert "network-online.target" in " ".join(d["Wants"]).split()
    assert "network-online.target" in " ".join(d["After"]).split()


def test_hardening_leaves_the_daemon_and_its_jobs_what_they_need():
    """Guards for choices explained in the unit's comments."""
    d = directives()
    # torch's oneDNN JIT (learner jobs, which inherit the filter) needs W^X transitions
    assert d.get("MemoryDenyWriteExecute", ["no"]) == ["no"]
    # os.nice() for learner jobs is setpriority(), in @resources: it must stay allowed
    filters = " ".join(d["SystemCallFilter"])
    assert "@resources" not in filters.replace("@system-service", "")
    assert d["SystemCallErrorNumber"] == ["EPERM"]  # a denied call fails; no SIGSYS kill
    families = d["RestrictAddressFamilies"][0].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)  # ctl/notify, exchange


@needs_analyze
def test_the_syscalls_the_daemon_needs_pass_the_filter():
    """Expand the unit's SystemCallFilter= with systemd's own group tables."""
    def group(name: str, seen: set[str] | None = None) -> set[str]:
        seen = set() if seen is None else seen
        out = subprocess.run([ANALYZE, "syscall-filter", name], capture_output=True,
                             text=True, timeout=60).stdout
        calls: set[str] = set()
        for line in out.splitlines()[1:]:
            word = line.strip()
            if not word or word.startswith("#"):
                continue
            if word.startswith("@"):
                if word not in seen:
                    seen.add(word)
                    calls |= group(word, seen)
            else:
                calls.add(word)
        return calls

    allowed: set[str] = set()
    for value in directives()["SystemCallFilter"]:
        deny = value.startswith("~")
        names = set()
        for item in value.lstrip("~").split():
            names |= group(item) if item.startswith("@") else {item}
        allowed = allowed - names if deny else allowed | names
    # Seen in an strace of the demo (every call it made), plus what config options use.
    needed = {"setpriority", "getpriority",  # niced learner jobs
              "sched_getaffinity", "sched_setaffinity", "mbind",  # OpenMP, onnxruntime
              "fchownat", "chown",  # control.group hands the socket to a group
              "mmap", "mprotect", "munmap", "madvise",  # allocators, SQLite WAL shm
              "clone", "clone3", "execve", "wait4", "pipe2",  # subprocesses
              "epoll_wait", "epoll_ctl", "socket", "sendto", "recvfrom", "connect",
              "inotify_init1", "inotify_add_watch",  # watchfiles
              "fcntl", "pread64", "pwrite64", "fdatasync", "rename", "renameat2"}
    assert needed <= allowed, needed - allowed


def test_sysusers_and_tmpfiles_snippets_create_what_the_readme_says(tmp_path):
    sysusers, tmpfiles = shutil.which("systemd-sysusers"), shutil.which("systemd-tmpfiles")
    if sysusers is None or tmpfiles is None:
        pytest.skip("systemd-sysusers / systemd-tmpfiles not installed")
    root = tmp_path / "root"
    (root / "etc" / "sysusers.d").mkdir(parents=True)
    (root / "etc" / "tmpfiles.d").mkdir(parents=True)
    shutil.copy(UNIT_DIR / "qtraderd.sysusers.conf", root / "etc/sysusers.d/qtraderd.conf")
    shutil.copy(UNIT_DIR / "qtraderd.tmpfiles.conf", root / "etc/tmpfiles.d/qtraderd.conf")
    subprocess.run([sysusers, f"--root={root}"], check=True, capture_output=True, timeout=60)
    user = next(ln for ln in (root / "etc/passwd").read_text().splitlines()
                if ln.startswith("qtraderd:"))
    assert user.split(":")[5:] == ["/var/lib/qtraderd", "/usr/sbin/nologin"]
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles needs root to set owners")
    subprocess.run([tmpfiles, f"--root={root}", "--create"], check=True,
                   capture_output=True, timeout=60)
    creds = root / "etc/qtraderd/credentials"
    assert creds.is_dir() and (creds.stat().st_mode & 0o777) == 0o700
    assert (root / "etc/qtraderd/plugins").is_dir()


# ------------------------------------------------- the template: qtraderd@NAME.service

TEMPLATE = UNIT_DIR / "qtraderd@.service"
# What differs between an instance and the single unit: its name, its own paths and
# credentials. Every other directive (the hardening, restart policy, notify protocol) must
# be the single unit's, value for value.
PER_INSTANCE = {"Description", "StateDirectory", "RuntimeDirectory", "CacheDirectory",
                "WorkingDirectory", "LoadCredential", "ExecStart", "Environment"}


def _installed_template(tmp_path: Path, text: str | None = None) -> Path:
    """The template as shipped in tmp_path, ExecStart pointed at this checkout's entry point
    (verify checks the binary exists)."""
    exe = Path(sys.executable).parent / "qtraderd"
    assert exe.exists(), f"{exe}: install the package (pip install -e .)"
    text = TEMPLATE.read_text() if text is None else text
    shipped = "ExecStart=/opt/qtraderd/.venv/bin/qtraderd "
    assert text.count(shipped) == 1
    (tmp_path / TEMPLATE.name).write_text(text.replace(shipped, f"ExecStart={exe} "))
    return tmp_path / TEMPLATE.name


def _instance(value: str, name: str = "acct1") -> str:
    return value.replace("%i", name)


@needs_analyze
def test_template_instance_verify_has_nothing_to_say(tmp_path):
    """`systemd-analyze verify qtraderd@acct1.service` with the template beside it: the
    template instantiated (specifiers expanded), not only the file parsed."""
    _installed_template(tmp_path)
    out = subprocess.run([ANALYZE, "verify", "qtraderd@acct1.service"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")
    # not vacuous: a broken template is noticed through the instance
    _installed_template(tmp_path, TEMPLATE.read_text().replace("Type=notify", "Type=notfy"))
    out = subprocess.run([ANALYZE, "verify", "qtraderd@acct1.service"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert "notfy" in out.stdout + out.stderr


def _exposure(path: Path) -> float:
    out = subprocess.run([ANALYZE, "security", "--offline=true", str(path)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert m, out.stdout + out.stderr
    return float(m.group(1))


@needs_analyze
def test_template_exposure_is_no_worse_than_the_single_units(tmp_path):
    inst = tmp_path / "qtraderd@acct1.service"
    shutil.copy(TEMPLATE, inst)
    assert _exposure(inst) <= min(_exposure(UNIT), 2.0)


def test_template_hardening_is_the_single_units():
    single, template = directives(), directives(TEMPLATE.read_text())
    assert set(single) == set(template)
    for key in set(single) - PER_INSTANCE:
        assert template[key] == single[key], key
    # Environment=: the same variables (the cache path differs by instance)
    assert ([v.split("=")[0] for v in template["Environment"]]
            == [v.split("=")[0] for v in single["Environment"]])


def test_template_paths_are_the_instances_own_and_agree_with_the_code():
    d = directives(TEMPLATE.read_text())
    for key in ("StateDirectory", "RuntimeDirectory", "CacheDirectory"):
        assert d[key] == ["qtraderd/%i"], key  # per instance: nothing writable is shared
    assert d["WorkingDirectory"] == ["%S/qtraderd/%i"]
    assert "XDG_CACHE_HOME=%C/qtraderd/%i" in d["Environment"]
    # ctl --instance NAME looks where systemd puts $RUNTIME_DIRECTORY of qtraderd@NAME
    runtime = Path("/run") / _instance(d["RuntimeDirectory"][0])
    assert ctl.instance_socket("acct1", env={}) == runtime / ctl.SOCKET_NAME
    assert ctl.daemon_socket_path(Path("/x"), {"RUNTIME_DIRECTORY": str(runtime)}) == (
        ctl.instance_socket("acct1", env={}))
    # credentials: the names the secrets module reads, from the instance's own directory
    creds = dict(v.split(":", 1) for v in d["LoadCredential"])
    assert set(creds) == {secrets.KEY_FILE, secrets.SECRET_FILE}
    for name, path in creds.items():
        assert path == f"/etc/qtraderd/credentials/%i/{name}"
    # ExecStart: a command line our CLI accepts, with the instance's config
    argv = shlex.split(d["ExecStart"][0])
    env = {"STATE_DIRECTORY": "/var/lib/qtraderd/acct1",
           "CONFIGURATION_DIRECTORY": "/etc/qtraderd"}
    expanded = [_instance(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], a))
                for a in argv[1:]]
    args = build_parser().parse_args(expanded)
    assert args.command == "run"
    assert args.state_dir == Path("/var/lib/qtraderd/acct1")
    assert args.models_dir == Path("/var/lib/qtraderd/acct1/models")
    assert args.config == Path("/etc/qtraderd/acct1.toml")
    assert args.plugins_dir == Path("/etc/qtraderd/plugins/acct1")
