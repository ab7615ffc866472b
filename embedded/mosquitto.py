"""A private Mosquitto broker: our own config, port, persistence folder and, optionally, ACLs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from embedded.process import ServerError, chown_tree, free_port, reachable_by, service_user, wait_for_port

DYNSEC_PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)


def find_dynsec_plugin() -> Path:
    for candidate in DYNSEC_PLUGIN_PATHS:
        if Path(candidate).exists():
            return Path(candidate)
    raise ServerError("Mosquitto's dynamic security plugin (mosquitto_dynamic_security.so) not found")


def find_mosquitto() -> Path:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise ServerError("mosquitto not found: `apt-get install mosquitto mosquitto-clients`")


class MosquittoServer:
    """Owns one broker process. Persistence is on and the queues are deep, because the default
    (1000 queued messages, nothing kept across a restart) silently drops QoS 1 telemetry.

    `password_file` and `acl_file`, when given, switch anonymous access off and enforce per-device
    credentials and topic ACLs. `tls` (CA, certificate and key files) makes the listener TLS-only
    and requires a client certificate whose common name becomes the username the ACL sees.

    `accounts`, when given, is the dynamic-security plugin's account document (clients, roles and
    their ACLs, see coldchain/broker_accounts.py): written to `dynamic-security.json` (0600) at
    every start, and changed on the running broker through its `$CONTROL` topic. Anonymous clients
    are refused unless `allow_anonymous`.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        accounts: dict[str, object] | None = None,
        allow_anonymous: bool = False,
    ) -> None:
        self._owned_tmp = data_dir is None
        self.data_dir = (data_dir or Path(tempfile.mkdtemp(prefix="coldchain-mqtt-"))).resolve()
        self.port = port or free_port()
        self.password_file = password_file
        self.acl_file = acl_file
        self.tls = tls
        self.accounts = accounts
        self.allow_anonymous = allow_anonymous
        self.binary = find_mosquitto()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls is not None else 'mqtt'}://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "persistence").mkdir(exist_ok=True)
        if self.accounts is not None:
            path = self.dynsec_file
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(self.accounts, handle, indent=1)
        run_as = "root"
        user = service_user("mosquitto") if os.geteuid() == 0 else None
        if user is not None and reachable_by(user, self.data_dir):
            chown_tree(self.data_dir, user)
            run_as = user.pw_name
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.data_dir / 'persistence'}/",
            "autosave_interval 30",
            "max_inflight_messages 10000",
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            "max_packet_size 2097152",
            "persistent_client_expiration 7d",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "connection_messages false",
        ]
        if self.tls is not None:
            cafile, certfile, keyfile = self.tls
            lines[1:1] = [
                f"cafile {cafile}",
                f"certfile {certfile}",
                f"keyfile {keyfile}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        if os.geteuid() == 0:
            lines.append(f"user {run_as}")
        if self.accounts is not None:
            lines += [
                f"plugin {find_dynsec_plugin()}",
                f"plugin_opt_config_file {self.dynsec_file}",
                f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            ]
        elif self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append(f"allow_anonymous {'false' if self.tls is not None else 'true'}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        conf = self.data_dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    @property
    def dynsec_file(self) -> Path:
        return self.data_dir / "dynamic-security.json"

    def start(self) -> MosquittoServer:
        conf = self._write_config()
        log_path = self.data_dir / "mosquitto.log"
        with open(log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                [str(self.binary), "-c", str(conf)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, timeout=30, proc=self._proc)
        except ServerError:
            self.stop()
            raise ServerError(
                f"mosquitto did not start: {log_path.read_text(errors='replace')[-800:]}"
            ) from None
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker; a clean stop (SIGTERM) writes its persistence file first."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        if self._owned_tmp:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> MosquittoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()
