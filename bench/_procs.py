"""The processes a benchmark starts: their tree, its memory (PSS), its listening ports, and stopping it.

Linux only (/proc). Everything here works on a root pid the caller started and the processes
that descend from it; nothing looks processes up by name, so other users of a shared machine
are never touched.

    Popen(argv, process_group=0) ──► root pid ──► descendants via /proc/*/stat (ppid)
                                                   ├─► PSS: sum of /proc/<pid>/smaps_rollup "Pss:"
                                                   └─► LISTEN ports: socket inodes of /proc/<pid>/fd
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcessTree", "descendants", "pss_kib", "tree_pss_kib", "tree_pss_by_cmdline", "tree_cpu_s", "listening_ports", "start", "stop"]

_PROC = Path("/proc")


def _ppid_map() -> dict[int, int]:
    """pid -> parent pid of every process visible now."""
    parents: dict[int, int] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone since listdir
            continue
        # The command name (field 2) may hold spaces and parentheses: split after the last ")".
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(root: int) -> list[int]:
    """Return `root` and every live process descending from it (children first found, then theirs)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppid_map().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid != root or (_PROC / str(root)).exists():
            out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def pss_kib(pid: int) -> int:
    """Return the proportional set size of `pid` in KiB (0 if it is gone or unreadable).

    PSS charges each shared page to the processes mapping it in equal parts, so a sum over
    processes counts shared memory (torch's libraries, Ray's object store pages) once.
    """
    try:
        for line in (_PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_pss_kib(root: int) -> tuple[int, int]:
    """Return (PSS summed over `root`'s process tree in KiB, number of processes)."""
    pids = descendants(root)
    return sum(pss_kib(p) for p in pids), len(pids)


def tree_pss_by_cmdline(root: int) -> list[tuple[str, int]]:
    """Return (command line head, PSS KiB) of every process of `root`'s tree."""
    out = []
    for pid in descendants(root):
        try:
            cmd = (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
        except OSError:
            continue
        out.append((cmd.strip(), pss_kib(pid)))
    return out


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = list((_PROC / str(pid) / "fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _listening_inodes() -> dict[int, int]:
    """inode -> port of every TCP socket in LISTEN state (IPv4 and IPv6) in this network namespace."""
    out = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A":  # TCP_LISTEN
                out[int(f[9])] = int(f[1].rsplit(":", 1)[1], 16)
    return out


def listening_ports(root: int) -> set[int]:
    """Return the TCP ports that processes of `root`'s tree listen on."""
    listening = _listening_inodes()
    ports = set()
    for pid in descendants(root):
        ports.update(listening[i] for i in _socket_inodes(pid) if i in listening)
    return ports


@dataclass
class ProcessTree:
    """A process this benchmark started (in its own process group, in our session) and its log."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    started_monotonic_s: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start(name: str, argv: list[str], *, env: dict[str, str], log_path: Path, cwd: str | None = None) -> ProcessTree:
    """Start `argv` in a new process group of our own session and return its handle.

    Not a new session (setsid / start_new_session): on these machines a server in its own
    session got its own scheduler autogroup and streamed in bursts (see the CPU-stack notes).
    The process group only lets `stop` signal exactly what was started.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    t0 = time.monotonic()
    try:
        popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, process_group=0)
    finally:
        log.close()  # the child holds its own descriptor
    return ProcessTree(name, popen, log_path, t0)


def stop(tree: ProcessTree, *, timeout_s: float = 60.0, grace_s: float = 10.0) -> float:
    """Stop `tree`: SIGTERM to its root, then SIGKILL whatever of its tree is left.

    The root gets `timeout_s` to exit, the rest of the tree `grace_s` more (Ray's processes
    die with their parent). Returns the seconds the root took to exit. The tree is listed
    before the signal, so processes reparented while shutting down are still ours to kill.
    """
    pids = descendants(tree.pid)
    t0 = time.monotonic()
    if tree.alive():
        tree.popen.send_signal(signal.SIGTERM)
        try:
            tree.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            tree.popen.kill()
            tree.popen.wait()
    took = time.monotonic() - t0
    started = tree.started_monotonic_s
    _wait_gone(pids, started, grace_s)
    for pid in pids:
        if _still_ours(pid, started):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _wait_gone(pids, started, 5.0)
    return took


def _wait_gone(pids: list[int], started_monotonic_s: float, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(_still_ours(p, started_monotonic_s) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def _still_ours(pid: int, started_monotonic_s: float) -> bool:
    """True while `pid` exists and was started after our root (so it is not a reused pid)."""
    try:
        fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    if fields[0] == "Z":
        return False
    start_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # since boot
    return start_s >= started_monotonic_s - 1.0


def tree_cpu_s(root: int) -> dict[int, tuple[str, float]]:
    """Return pid -> (command line head, CPU seconds used so far: user + system) over `root`'s tree."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in descendants(root):
        try:
            fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
        except OSError:
            continue
        out[pid] = (cmd.strip(), (int(fields[11]) + int(fields[12])) / tick)
    return out
