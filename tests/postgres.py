"""
A throwaway local PostgreSQL server for Optuna studies shared by several tuning processes.

Used by the distributed-tuning tests; for tuning across machines point ``--storage`` at a real server
instead (see the README). PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` system user.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time


def find_postgres_bin() -> str | None:
    """Folder holding ``initdb``/``pg_ctl``/``postgres`` (PATH first, then Debian's layout), or None."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        return os.path.dirname(os.path.realpath(initdb))
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(candidates[-1]) if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """
    Start ``initdb`` + ``pg_ctl`` in a temporary folder on a free localhost port; ``stop()`` removes it.

    :param dbname: database created for the study
    :param bin_dir: PostgreSQL binaries (default: :func:`find_postgres_bin`)
    """

    def __init__(self, dbname: str = "optuna", bin_dir: str | None = None) -> None:
        self.bin_dir = bin_dir or find_postgres_bin()
        if self.bin_dir is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's 'postgresql'")
        self.dbname = dbname
        self.port = _free_port()
        self.root = tempfile.mkdtemp(prefix="sb3-m3po-pg-")
        self.data_dir = os.path.join(self.root, "data")
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chmod(self.root, 0o755)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the study database (trust authentication, localhost only)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.dbname}"

    def _run(self, tool: str, *args: str) -> None:
        command = [*self._run_as, os.path.join(self.bin_dir, tool), *args]  # type: ignore[arg-type]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()[-1000:]}")

    def start(self) -> str:
        """Create the cluster, start the server, create the database; returns :attr:`url`."""
        self._run("initdb", "-D", self.data_dir, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c max_connections=50"
        self._run("pg_ctl", "-D", self.data_dir, "-o", options, "-l", os.path.join(self.root, "log"), "-w", "start")
        deadline = time.time() + 30
        while True:
            try:
                self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.dbname)
                return self.url
            except RuntimeError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its files."""
        if os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
            self._run("pg_ctl", "-D", self.data_dir, "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalPostgres":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
