"""Process plumbing shared by the private servers: free ports, readiness, running as a service user."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from pathlib import Path


class ServerError(RuntimeError):
    """A private server that could not be set up or started; the message says what to install."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:port now. Servers bind with SO_REUSEADDR, so a
    port whose last connections linger in TIME_WAIT counts as free; only a listener makes it busy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, *, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"server exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def service_user(name: str) -> pwd.struct_passwd | None:
    """The unprivileged account to run a server as when we are root (None when we are not root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ServerError(
            f"running as root needs the system user {name!r}; install the Debian package that creates it"
        ) from None


def reachable_by(user: pwd.struct_passwd, path: Path) -> bool:
    """Whether `user` can traverse every folder above `path` (root's home is often closed)."""
    for parent in [*reversed(path.resolve().parents)]:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid == user.pw_gid:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            return False
    return True


def chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    os.chown(path, user.pw_uid, user.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)
