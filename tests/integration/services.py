"""Real services on loopback for the integration suite: a throw-away PostgreSQL cluster and an MLflow
tracking server on it, each started as its own process group and stopped by whoever started it.

PostgreSQL runs from the Debian package's binaries (`postgresql`, /usr/lib/postgresql/<v>/bin), as
the current user in a temporary data directory on a free port of 127.0.0.1, never as, or beside, a
system cluster. `initdb` refuses to run as root: under root the cluster belongs to the unprivileged
`postgres` user the package creates. When the binaries are missing and we are root (CI machines are),
the package is installed with apt-get; otherwise the suite is skipped, saying why.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


class Unavailable(RuntimeError):
    """A service cannot be provided on this machine; the message says why and what would fix it."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    """Progress of the suite on the terminal (pytest -s), stamped, flushed at once."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- PostgreSQL --------------------------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """The folder of initdb/pg_ctl/postgres: $DGNET_PG_BIN, the newest /usr/lib/postgresql/<v>/bin,
    or wherever `initdb` is on PATH."""
    candidates = [os.environ.get("DGNET_PG_BIN", "")]
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += reversed(versions)
    on_path = shutil.which("initdb")
    candidates.append(str(Path(on_path).resolve().parent) if on_path else "")
    for folder in filter(None, candidates):
        if all((Path(folder) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


def install_postgres() -> None:
    """apt-get install the Debian `postgresql` package (root only), without creating or starting the
    system's `main` cluster: the suite runs its own, and starts nothing it does not stop."""
    if os.geteuid() != 0:
        raise Unavailable("PostgreSQL is not installed and this is not root: install it with "
                          "`sudo apt-get install -y postgresql` (or set DGNET_PG_BIN to its bin folder)")
    if shutil.which("apt-get") is None:
        raise Unavailable("PostgreSQL is not installed and there is no apt-get here: install PostgreSQL "
                          "and set DGNET_PG_BIN to the folder holding initdb and pg_ctl")
    conf = Path("/etc/postgresql-common/createcluster.conf")
    if not conf.exists():  # Debian's documented switch: install the binaries, create no cluster
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text("create_main_cluster = false\n")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log("PostgreSQL binaries not found: apt-get install -y postgresql")
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                     "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
                     "postgresql"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise Unavailable(f"`{' '.join(command)}` failed ({done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()[-500:]}")


def _run_as(user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--"] if user else []


@dataclass
class Postgres:
    """A private PostgreSQL cluster: `start()`, `create_database(name)`, `url(name)`, `stop()`."""

    bindir: Path
    port: int = field(default_factory=free_port)
    user: str = "dgnet"  # the cluster's superuser; trust authentication on loopback only
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="scale-pg-")))
    owner: str | None = None  # the OS user running the server (None: the current user)

    def __post_init__(self) -> None:
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                pwd.getpwnam("postgres")
                self.owner = "postgres"
            self.owner = self.owner or "nobody"
            info = pwd.getpwnam(self.owner)
            os.chown(self.folder, info.pw_uid, info.pw_gid)  # mkdtemp made it 0700, root's

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _tool(self, name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [*_run_as(self.owner), str(self.bindir / name), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.folder)
        if done.returncode != 0:
            raise Unavailable(f"{name} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
        return done

    def start(self) -> Postgres:
        self._tool("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8",
                   "--no-sync", "--no-instructions")
        # Listen on 127.0.0.1 only, the Unix socket in our folder (not /var/run/postgresql); -F: no
        # fsync, a throw-away cluster.
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -F"
        self._tool("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "postgres.log"), "-o", options,
                   "-w", "-t", "60", "start")
        log(f"PostgreSQL {self.bindir.parent.name} on 127.0.0.1:{self.port} (data {self.data})")
        return self

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres",
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._tool("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
            except (Unavailable, subprocess.TimeoutExpired):
                self._tool("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            log(f"PostgreSQL on port {self.port} stopped")
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres() -> Postgres:
    """A running private cluster, installing the Debian package first when needed (see the module)."""
    try:
        import psycopg  # noqa: F401 - the driver every URL of the suite names
    except ImportError as exc:
        raise Unavailable("the PostgreSQL driver is missing: pip install -e '.[scale]'") from exc
    bindir = postgres_bindir()
    if bindir is None:
        install_postgres()
        bindir = postgres_bindir()
        if bindir is None:
            raise Unavailable("apt-get installed postgresql but no initdb/pg_ctl was found under "
                              "/usr/lib/postgresql/*/bin")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        raise Unavailable("running as root without `runuser`: initdb cannot run as root")
    return Postgres(bindir).start()


# --- processes and the MLflow server ----------------------------------------------------------------


def spawn(command: list[str], log_file: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """A child in its own process group (so that it and everything it forks can be signalled at once),
    stdout and stderr to `log_file`."""
    handle = open(log_file, "ab")  # noqa: SIM115 - lives as long as the process; closed by `stop`
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                               start_new_session=True)
    process.log_handle = handle  # type: ignore[attr-defined]
    return process


def stop(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
    """Signal `process`'s whole group, wait, SIGKILL what is left; returns the exit code."""
    if process is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):  # the group's other members (server workers)
        os.killpg(process.pid, signal.SIGKILL)
    code = process.wait(timeout=30)
    handle = getattr(process, "log_handle", None)
    if handle is not None:
        handle.close()
    return code


@dataclass
class MlflowServer:
    """`mlflow server` with a SQL backend store and a local artifact destination (proxied artifacts:
    clients upload through the server, so they never need access to the folder themselves)."""

    backend: str
    artifacts: Path
    log_file: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> MlflowServer:
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend,
                   "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1"]
        # No background job runner (a dozen huey processes) on a 2-core machine: nothing here uses it.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "MLFLOW_DISABLE_TELEMETRY": "true"}
        started = time.monotonic()
        self.process = spawn(command, self.log_file, env=env)
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise Unavailable(f"mlflow server exited with {self.process.returncode}; its log "
                                  f"{self.log_file}:\n{self.log_file.read_text()[-2000:]}")
            health = f"{self.url}/health"
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=2) as answer:
                if answer.status == 200:
                    log(f"mlflow server at {self.url} (backend {self.backend}, artifacts "
                        f"{self.artifacts}) up after {time.monotonic() - started:.0f} s")
                    return self
            time.sleep(0.5)
        self.stop()
        raise Unavailable(f"mlflow server did not answer {self.url}/health within {timeout:.0f} s; "
                          f"log {self.log_file}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            stop(self.process, sig)
            log(f"mlflow server at {self.url} stopped ({signal.Signals(sig).name})")
        self.process = None


@contextlib.contextmanager
def running(server: MlflowServer) -> Iterator[MlflowServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()
