#!/usr/bin/env python3
"""Slow-body attack on a running-from-scratch Tollgate, with its memory measured.

Starts the demo backend and the gateway (the shipped gateway.toml, on free ports), then
opens, all at once:
  - 1,000 connections to the Plivo callback route, each declaring a 64 KiB form body and
    sending one byte short of it (unauthenticated: the signature needs the whole body);
  - 300 connections to POST /campaigns with a valid token, each declaring a JSON body of
    just under 1 MiB, sending 1,000,000 bytes of it, then stalling.
Every second it records the gateway's RSS (VmRSS) and how many attack connections the
gateway has answered or closed. It prints the baseline, the peak, the RSS at 30 s and at
the end, and what the connections were answered with.

    tests/bench/slow_bodies.py [--binary target/release/tollgate] [--seconds 60]
"""

import argparse
import asyncio
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_line(proc, prefix, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline().decode()
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise RuntimeError(f"no `{prefix}` line")


async def attacker(host, port, head, body, outcome):
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(head + body)
        await writer.drain()
        data = await reader.read(64)
        status = data.split(b" ")[1].decode() if data.startswith(b"HTTP/") else "closed"
        outcome[status] = outcome.get(status, 0) + 1
        writer.close()
    except (ConnectionError, OSError):
        outcome["reset"] = outcome.get("reset", 0) + 1


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/tollgate"))
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--callbacks", type=int, default=1000)
    parser.add_argument("--json", type=int, default=300)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    backend_port = free_port()
    backend = subprocess.Popen(
        [args.binary, "demo", "--backend-only", f"127.0.0.1:{backend_port}"],
        stdout=subprocess.PIPE, cwd=ROOT)
    wait_line(backend, "demo backend listening on ")
    shipped = open(os.path.join(ROOT, "gateway.toml")).read()
    config = re.sub(r'listen = \["127.0.0.1:8080"\]', 'listen = ["127.0.0.1:0"]', shipped)
    config = config.replace('url = "http://127.0.0.1:8081"', f'url = "http://127.0.0.1:{backend_port}"')
    config = config.replace('listen = "127.0.0.1:9901"', 'listen = "127.0.0.1:0"')
    config = config.replace('access_log = true', 'access_log = false')
    fd, path = tempfile.mkstemp(suffix=".toml", prefix=".bench-", dir=ROOT)
    os.write(fd, config.encode())
    os.close(fd)
    gateway = None
    try:
        token = subprocess.check_output(
            [args.binary, "token", "mint", "--client", "1001", "--config", path], cwd=ROOT).decode().strip()
        gateway = subprocess.Popen([args.binary, "run", "--config", path], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, cwd=ROOT)
        addr = wait_line(gateway, "tollgate listening on http://")
        host, port = addr.rsplit(":", 1)
        time.sleep(0.5)
        baseline = rss_mib(gateway.pid)

        callback_head = (b"POST /callbacks/plivo/answer HTTP/1.1\r\nHost: gw\r\n"
                         b"x-plivo-signature-v3: c2lnbmF0dXJl\r\nx-plivo-signature-v3-nonce: 1\r\n"
                         b"content-type: application/x-www-form-urlencoded\r\ncontent-length: 65536\r\n\r\n")
        json_head = (f"POST /campaigns HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
                     "content-type: application/json\r\ncontent-length: 1048000\r\n\r\n").encode()
        outcome = {}
        tasks = [asyncio.create_task(attacker(host, int(port), callback_head, b"a" * 65535, outcome))
                 for _ in range(args.callbacks)]
        tasks += [asyncio.create_task(attacker(host, int(port), json_head, b'{"pad":"' + b"x" * 999_992, outcome))
                  for _ in range(args.json)]
        started = time.time()
        samples = []
        while time.time() - started < args.seconds:
            await asyncio.sleep(1)
            done = sum(outcome.values())
            samples.append((round(time.time() - started), rss_mib(gateway.pid), done))
        for t in tasks:
            t.cancel()
        peak = max(samples, key=lambda s: s[1])
        at30 = next((s for s in samples if s[0] >= 30), samples[-1])
        print(f"attack: {args.callbacks} callbacks (64 KiB declared, 1 byte short), "
              f"{args.json} JSON bodies (1,000,000 of 1,048,000 bytes), {args.seconds} s")
        print(f"RSS baseline {baseline:.1f} MiB, peak {peak[1]:.1f} MiB at {peak[0]} s, "
              f"{at30[1]:.1f} MiB at {at30[0]} s, {samples[-1][1]:.1f} MiB at {samples[-1][0]} s")
        first_all = next((s[0] for s in samples if s[2] >= args.callbacks + args.json), None)
        print(f"answered or closed: {samples[-1][2]} of {args.callbacks + args.json}"
              f"{f' (all by {first_all} s)' if first_all is not None else ''}: "
              + ", ".join(f"{k}: {v}" for k, v in sorted(outcome.items())))
        print("per second (s, RSS MiB, connections done): "
              + " ".join(f"{s[0]}:{s[1]:.0f}:{s[2]}" for s in samples))
    finally:
        if gateway:
            gateway.terminate()
        backend.terminate()
        os.unlink(path)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
