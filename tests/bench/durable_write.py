#!/usr/bin/env python3
"""What one durable write of the ledger log costs this machine, each way the log can
make a group durable: a buffered write and `fdatasync` (what the log falls back to),
and one `O_DIRECT | O_DSYNC` write (what it does where the file system allows it).

    python3 tests/bench/durable_write.py [DIR] [WRITES]

DIR (default: the current directory) should be on the disk the ledger will use. Each
way writes WRITES (default 3000) 4 KiB blocks into a file whose blocks already exist (as
the log's recycled segments do) and prints the wall time and the whole machine's busy
CPU per write (from /proc/stat, so the kernel's share and its writeback count too).
Nothing else should run meanwhile.
"""
import mmap
import os
import sys
import time

BLOCK = 4096
SIZE = 16 << 20


def machine():
    fields = list(map(int, open("/proc/stat").readline().split()[1:]))
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]
    return busy, fields[3] + fields[4]


def run(path, name, flags, writes, sync):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    os.write(fd, b"\0" * SIZE)
    os.fsync(fd)
    os.close(fd)
    # Page-aligned memory, as O_DIRECT asks.
    buffer = mmap.mmap(-1, BLOCK)
    buffer.write(b"x" * BLOCK)
    fd = os.open(path, os.O_RDWR | flags)
    ticks = os.sysconf("SC_CLK_TCK")
    busy0, _ = machine()
    start = time.time()
    for i in range(writes):
        os.pwritev(fd, [memoryview(buffer)], (i * BLOCK) % SIZE)
        if sync:
            os.fdatasync(fd)
    wall = time.time() - start
    busy1, _ = machine()
    os.close(fd)
    print(
        f"{name:28} wall {1e6 * wall / writes:6.1f} us/write, "
        f"machine CPU {1e6 * (busy1 - busy0) / ticks / writes:6.1f} us/write"
    )


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    writes = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    path = os.path.join(directory, "durable-write-bench.tmp")
    try:
        for _ in range(2):
            run(path, "buffered write + fdatasync", 0, writes, True)
            run(path, "O_DIRECT | O_DSYNC write", os.O_DIRECT | os.O_DSYNC, writes, False)
    finally:
        if os.path.exists(path):
            os.unlink(path)


if __name__ == "__main__":
    main()
