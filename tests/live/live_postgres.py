"""A private PostgreSQL 15 cluster for the live tests: initdb + pg_ctl on a free port.

Run as root, the server runs as an unprivileged user (PostgreSQL refuses root): the
package's `postgres` user when it exists, otherwise a system user `peftflow-pg` created
with useradd. The cluster listens on 127.0.0.1 only, its socket lives in its own folder
(-k), and it uses scram-sha-256 with a random password, so the URL carries a real secret.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PG_BIN = Path(os.environ.get("PEFTFLOW_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
FALLBACK_USER = "peftflow-pg"


def missing_binaries() -> str | None:
    """Why the cluster cannot start here, or None."""
    absent = [n for n in ("initdb", "pg_ctl", "createdb") if not (PG_BIN / n).is_file()]
    if absent:
        return (f"PostgreSQL 15 server binaries not found ({', '.join(absent)} missing in "
                f"{PG_BIN}); install postgresql-15 or set PEFTFLOW_TEST_PG_BIN")
    return None


def _server_user() -> pwd.struct_passwd | None:
    """The account to run the server as; None when we are not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    FALLBACK_USER], check=True)
    return pwd.getpwnam(FALLBACK_USER)


@dataclass
class Cluster:
    folder: Path
    port: int
    password: str
    user: pwd.struct_passwd | None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://airflow:{self.password}@127.0.0.1:{self.port}/airflow"

    def _run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8",
               "PGPASSWORD": self.password}
        as_user: dict[str, Any] = {}
        if self.user is not None:
            as_user = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        return subprocess.run(argv, env=env, cwd=self.folder, capture_output=True, text=True,
                              timeout=120, **as_user, **kwargs)

    def _check(self, argv: list[str]) -> None:
        done = self._run(argv)
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}):\n"
                               f"{done.stdout}\n{done.stderr}\n{tail}")

    def start(self) -> None:
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self.user is not None:
            for path in (self.folder, pwfile):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        self._check([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "airflow",
                     f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
                     "--locale=C.UTF-8"])
        pwfile.unlink()
        # pg_ctl hands -o to the server through a shell: only our own port and folder.
        self._check([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l",
                     str(self.folder / "server.log"), "-w", "-t", "60", "-o",
                     f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start"])
        self._check([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                     "-U", "airflow", "airflow"])

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                       "-t", "30", "stop"])

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def new_cluster(folder: Path, port: int) -> Cluster:
    folder.mkdir(parents=True)
    user = _server_user()
    if user is not None:
        # The server user must reach its folder: open the parent for traversal only.
        folder.parent.chmod(folder.parent.stat().st_mode | 0o111)
    return Cluster(folder, port, secrets.token_urlsafe(18), user)
