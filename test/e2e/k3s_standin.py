#!/usr/bin/python3
"""A stand-in for the k3s binary in the e2e cluster: the real one cannot be downloaded here.

It takes k3s's own command line, as the node-agent gives it, and does the part
of k3s's job that proves the agent wired it up right:
- `k3s server ... --node-ip IP --token-file F` listens on IP:6443 and welcomes every
  agent that presents the same token, recording the address each one came from;
- `k3s agent --server https://HOST:6443 ...` keeps joining that server with its
  token, recording the answer: every 3 s until welcomed, then every 30 s (an emulated
  node pays for each try, all the while the cluster runs).
What it saw goes to /run/k3s-standin.json for the test to read.
"""

import json
import os
import socket
import sys
import time
from urllib.parse import urlparse

RECORD = "/run/k3s-standin.json"
TRY_EVERY, WELCOMED_EVERY = 3, 30   # seconds between an agent's joins


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def token(args: list[str]) -> str:
    """As k3s reads it: from --token-file (the node-agent never puts a token on a command line)."""
    with open(option(args, "--token-file")) as f:
        return f.read().strip()


def record(state: dict) -> None:
    with open(RECORD + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(RECORD + ".tmp", RECORD)


def server(args: list[str], state: dict) -> None:
    expected = token(args)
    listener = socket.create_server((option(args, "--node-ip"), 6443), reuse_port=True)
    state["agents"] = {}
    record(state)
    while True:
        conn, (peer, _) = listener.accept()
        with conn:
            conn.settimeout(5)
            offered = conn.makefile().readline().strip()
            welcome = offered == expected
            conn.sendall(b"welcome\n" if welcome else b"bad token\n")
        if welcome:
            state["agents"][peer] = time.time()
            record(state)


def agent(args: list[str], state: dict) -> None:
    url = urlparse(option(args, "--server"))
    while True:
        try:
            with socket.create_connection((url.hostname, url.port), timeout=5) as conn:
                conn.sendall(token(args).encode() + b"\n")
                state["answer"] = conn.makefile().readline().strip()
        except OSError as exc:
            state["answer"] = f"cannot connect: {exc}"
        state["at"] = time.time()
        record(state)
        time.sleep(WELCOMED_EVERY if state["answer"] == "welcome" else TRY_EVERY)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    state = {"mode": mode, "argv": sys.argv[1:], "pid": os.getpid()}
    {"server": server, "agent": agent}[mode](args, state)


if __name__ == "__main__":
    main()
