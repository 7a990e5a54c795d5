"""Where a process's CPU goes, from a ``perf record -g`` of it: a split that adds up to 100%.

``bench/cpu.py --perf DIR`` records every process of every cell with ``perf record -e cpu-clock
-g -p PID`` (a software clock: this VM has no hardware cycle counter) and prints this split, in
µs per write (the share of the process's CPU per write measured from /proc in the same cell):

- the kernel work that matters, inclusive of everything under it: ``pwrite`` (``pwrite64``,
  ``pwritev``: the page-cache write), ``fdatasync`` (the durable watermark's writeback, which
  the standalone server never pays within a run), ``tcp send`` (``tcp_sendmsg``, from
  ``writev`` or ``sendmsg``: on loopback the sender also runs the receiver's TCP receive),
  ``tcp recv`` (``tcp_recvmsg``) and ``wait`` (``epoll_wait``, ``futex``, sleeps: the wakeups'
  scheduling);
- ``other syscalls``: the rest of the time under the system call entry;
- ``other kernel``: kernel time outside any system call (page faults, interrupts);
- user space by shared object: ``python`` (the interpreter), and each other object over 1%
  (uvloop's loop, google_crc32c, libc's memmove ...), the rest as ``other user``.

Usage: ``bench/perf_split.py FILE.data [CPU_US_PER_WRITE]``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

# Each category: groups of kernel functions, one function per group counted (the first one the
# profile has: some are inlined away), each inclusive of what runs under it. No function of one
# group calls one of another, so the shares add up.
SYSCALLS: dict[str, tuple[tuple[str, ...], ...]] = {
    "pwrite": (("__x64_sys_pwrite64",), ("__x64_sys_pwritev", "do_pwritev"), ("__x64_sys_pwritev2",)),
    "fdatasync": (("do_fsync", "__x64_sys_fdatasync"),),
    "tcp send": (("tcp_sendmsg",),),  # on loopback: the receiver's TCP receive too
    "tcp recv": (("tcp_recvmsg",),),
    "wait": (("do_epoll_wait",), ("do_futex",), ("hrtimer_nanosleep",)),
}
ENTRY = "entry_SYSCALL_64_after_hwframe"
_LINE = re.compile(r"^\s*([\d.]+)%\s+([\d.]+)%\s+\[[k.]\]\s+(\S+)\s*$")
_DSO = re.compile(r"^\s*([\d.]+)%\s+(\S.*?)\s*$")


def _report(data: Path, *args: str) -> list[str]:
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-g", "none",
                          "--percent-limit", "0", *args], capture_output=True, text=True,
                         check=False).stdout
    return [line for line in out.splitlines() if line.strip() and not line.startswith("#")]


def split(data: Path) -> dict[str, float]:
    """Category -> share of the process's samples (0-1), adding up to 1."""
    inclusive: dict[str, float] = {}
    for line in _report(data, "--children", "--sort", "sym"):
        match = _LINE.match(line)
        if match:
            inclusive[match.group(3)] = float(match.group(1)) / 100
    dsos: dict[str, float] = {}
    for line in _report(data, "--no-children", "--sort", "dso"):
        match = _DSO.match(line)
        if match:
            dsos[match.group(2)] = dsos.get(match.group(2), 0.0) + float(match.group(1)) / 100
    shares: dict[str, float] = {}
    for name, groups in SYSCALLS.items():
        shares[name] = sum(next((inclusive[f] for f in group if f in inclusive), 0.0)
                           for group in groups)
    in_syscalls = inclusive.get(ENTRY, 0.0)
    shares["other syscalls"] = max(in_syscalls - sum(shares.values()), 0.0)
    kernel = sum(share for dso, share in dsos.items() if "kernel" in dso)
    shares["other kernel"] = max(kernel - in_syscalls, 0.0)
    other_user = 0.0
    for dso, share in sorted(dsos.items(), key=lambda item: -item[1]):
        if "kernel" in dso:
            continue
        base = Path(dso).name
        if base.startswith(("libpython", "python")):  # the interpreter, not an extension module
            shares["python"] = shares.get("python", 0.0) + share
        elif share >= 0.01:
            shares[base.split(".cpython")[0].split(".so")[0].split("-")[0]] = share
        else:
            other_user += share
    shares["other user"] = other_user
    return shares


def render(shares: dict[str, float], cpu_us: float | None) -> str:
    parts = []
    for name, share in shares.items():
        if share < 0.005:
            continue
        parts.append(f"{name} {share * cpu_us:.1f} µs" if cpu_us is not None
                     else f"{name} {share:.0%}")
    return ", ".join(parts)


def main() -> int:
    data = Path(sys.argv[1])
    cpu_us = float(sys.argv[2]) if len(sys.argv) > 2 else None
    print(render(split(data), cpu_us))
    return 0


if __name__ == "__main__":
    sys.exit(main())
