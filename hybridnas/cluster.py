"""Ray, started or joined in one place: every ``ray.init`` of hybridnas goes through :func:`ensure_ray`.

- **Embedded** (no address): Ray starts here as a one-machine Ray whose every server (GCS,
  raylet, workers, object manager, runtime-env agent) listens on 127.0.0.1 only, and with
  Ray's token authentication left as Ray sets it (on by default since Ray 2.59): a process
  on this host that reaches a port still needs the token Ray keeps in ``~/.ray``. hybridnas
  never sets ``RAY_AUTH_MODE``. (tests/test_cluster.py reads the sockets from /proc.)
- **A cluster** (``--ray-address host:port``): the address is checked and its port tried with
  a bounded timeout before Ray is asked, so a typo or a closed port is one clear line in
  seconds, not minutes of Ray's retries.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from hybridnas.errors import UserError

__all__ = ["CONNECT_TIMEOUT_S", "RayAddressError", "check_address", "ensure_ray"]

CONNECT_TIMEOUT_S = 5.0
# Ray's servers listen on the node's address, and on Linux ray.init(_node_ip_address="127.0.0.1")
# is turned back into this host's outward address (services.resolve_ip_for_localhost), so they
# listen on every interface. The loopback node address comes from Ray's one-machine mode, the
# one it runs on macOS and Windows: this switch off (ray_constants.ENABLE_RAY_CLUSTER).
ONE_MACHINE_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayAddressError(UserError):
    """A ``--ray-address`` that is malformed or cannot be reached; the message is one line."""


def check_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of a ``host:port`` (or ``ray://host:port``) address whose port accepts
    a TCP connection within CONNECT_TIMEOUT_S. ``auto`` is Ray's own lookup and not checked here."""
    text = address.removeprefix("ray://")
    host, sep, port_text = text.rpartition(":")
    if (not sep or not host or any(c.isspace() for c in host)
            or not port_text.isdigit() or not 0 < int(port_text) < 65536):
        raise RayAddressError(f"--ray-address {address!r}: expected HOST:PORT of a running Ray head, "
                              "e.g. 10.0.0.5:6379")
    port = int(port_text)
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RayAddressError(f"--ray-address {address}: no Ray head answers there ({reason}; "
                              f"tried for {CONNECT_TIMEOUT_S:g} s)") from None
    return host, port


def ensure_ray(address: str | None = None, **options: Any) -> None:
    """Start Ray here (``address`` None), or join the cluster at ``address``; nothing if this
    process already runs Ray. ``options`` go to ``ray.init`` (e.g. ``num_cpus``)."""
    import ray

    if ray.is_initialized():
        return
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False, **options}
    if address is None or address == "local":
        _one_machine()
        ray.init(**options)
        return
    if address != "auto":
        check_address(address)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:  # Ray's "could not connect", a version mismatch
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if os.environ.get("RAY_AUTH_MODE") != "token":  # Ray turns token auth on by itself only for "auto"
            first += ("; a head with token authentication (Ray's default) is joined with RAY_AUTH_MODE=token "
                      "and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
        raise RayAddressError(f"--ray-address {address}: {first}") from None


def _one_machine() -> None:
    """Ray's one-machine mode: its node address is the loopback one. The environment carries
    the switch to the processes Ray starts; the constant is set too because Ray read it when
    this process imported Ray. (Joining a cluster leaves both as Ray has them.)"""
    from ray._private import ray_constants

    os.environ[ONE_MACHINE_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
