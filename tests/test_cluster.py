"""Claims about where Ray listens: the Ray that hybridnas starts on its own answers on the
loopback interface only, and a Ray head started by ``ray start`` (a cluster hybridnas joins
with ``--ray-address``) is Ray's own, reachable from other hosts, and still joinable.

The listening sockets are read from /proc (Linux): each process's socket inodes, matched to
the LISTEN rows of /proc/net/tcp and tcp6.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")

LISTEN = "0A"

# A driver: Ray through hybridnas.cluster, one task run, then the listening sockets of this
# process and every process below it (the GCS, the raylet, the workers, the agents).
DRIVER = r"""
import json, os, sys
sys.path.insert(0, os.environ["TESTS_DIR"])
from test_cluster import listening
from hybridnas.cluster import ensure_ray
import ray
ensure_ray(sys.argv[1]) if sys.argv[1] else ensure_ray(num_cpus=1)
@ray.remote
def node_ip():
    return ray.util.get_node_ip_address()
ip = ray.get(node_ip.remote())
print(json.dumps({"task_node_ip": ip, "listening": listening(os.getpid())}))
ray.shutdown()
"""


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # a process that ended while we looked
            children.setdefault(ppid, []).append(int(entry.name))
    seen, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(children.get(p, []))
    return seen


def _address(hex_address: str) -> str:
    """/proc/net/tcp{,6}'s ``HEX:PORT`` local address as an IP (the kernel writes it as
    32-bit words in host byte order)."""
    raw = bytes.fromhex(hex_address.split(":")[0])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening(root_pid: int) -> list[list]:
    """[[ip, port, pid], ...] for every listening TCP socket of ``root_pid`` and its descendants."""
    owner: dict[str, int] = {}
    for pid in _descendants(root_pid):
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owner[target[8:-1]] = pid
        except OSError:
            continue
    return [[ip, port, owner[inode]] for ip, port, inode in _listen_rows() if inode in owner]


def _listen_rows() -> list[tuple[str, int, str]]:
    """(ip, port, socket inode) of every listening TCP socket of this host."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN:
                rows.append((_address(fields[1]), int(fields[1].rsplit(":", 1)[1], 16), fields[9]))
    return rows


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _drive(address: str = "", **extra_env: str) -> dict:
    env = {**os.environ, "TESTS_DIR": str(Path(__file__).parent), **extra_env}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    done = subprocess.run([sys.executable, "-c", DRIVER, address], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_embedded_ray_listens_on_the_loopback_interface_only():
    seen = _drive()
    assert _is_loopback(seen["task_node_ip"])
    assert len(seen["listening"]) >= 4, seen  # the GCS, the raylet's two, the driver's and a worker's
    outward = [row for row in seen["listening"] if not _is_loopback(row[0])]
    assert not outward, f"listening beyond 127.0.0.1: {outward}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """(port, auth environment) of a Ray head started the way a cluster's is (``ray start
    --head``, token authentication on, its token given in the environment as a cluster's
    users are given it), in its own session so that stopping it stops its processes only
    (``ray stop`` would stop every Ray of this host, the test run's own included)."""
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_cli is None:
        pytest.skip("no ray command")
    port = _free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}, **auth}
    temp = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")  # short: Ray's unix sockets live in it
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(row[1] == port for row in _listen_rows()):
            assert head.poll() is None and time.monotonic() < deadline, head.stderr.read().decode()[-3000:]
            time.sleep(0.5)
        yield port, auth
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head and every process it started: a test's cluster
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_cluster_joined_by_address_is_rays_own_and_reachable_from_other_hosts(ray_head):
    port, auth = ray_head
    seen = _drive(f"127.0.0.1:{port}", **auth)
    assert not _is_loopback(seen["task_node_ip"])  # the head's node, at its outward address
    gcs = [row for row in _listen_rows() if row[1] == port]
    assert gcs and not any(_is_loopback(row[0]) for row in gcs), gcs

