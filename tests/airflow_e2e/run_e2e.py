#!/usr/bin/env python
"""End-to-end check of an Airflow 3 executor against a real Airflow (api-server, dag-processor, scheduler).

Run from inside a virtualenv that has ``apache-airflow==3.3.x`` (and, for our executor, this package with
the ``airflow`` extra) installed::

    python tests/airflow_e2e/run_e2e.py --executor async_executor.airflow.AsyncLocalExecutor

``--executor LocalExecutor`` runs the same scenarios against Airflow's own executor (used to validate the
harness).  By default the 40-task fan-out and the idle-memory measurement are also run under Airflow's
LocalExecutor, and the fan-out under our executor with warm start switched off ("cold": one fresh
interpreter per task), in the same run, so the three are printed side by side.

Everything is real: a temporary AIRFLOW_HOME with SQLite, ``airflow db migrate``, the three components on
free 127.0.0.1 ports, DAGs triggered through the REST API.  Wall times and PSS are *printed*, never
asserted.  Every process this script starts is stopped by pid in a ``finally``; the script exits non-zero
when any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DAGS_SRC = HERE / "dags"
LOCAL_EXECUTOR = "LocalExecutor"

# A JWT is three base64url segments; the first two are JSON objects, so they start with "eyJ".
JWT_RE = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")

TERMINAL_RUN_STATES = {"success", "failed"}


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def airflow_argv() -> list[str]:
    script = Path(sys.executable).parent / "airflow"
    return [str(script)] if script.exists() else [sys.executable, "-m", "airflow"]


# --------------------------------------------------------------------------------------------- /proc


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def smaps(pid: int) -> dict[str, int]:
    out = {}
    for line in read_text(f"/proc/{pid}/smaps_rollup").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1])
    return out


def pss_kb(pid: int) -> int | None:
    return smaps(pid).get("Pss")


def uss_kb(pid: int) -> int:
    m = smaps(pid)
    return m.get("Private_Clean", 0) + m.get("Private_Dirty", 0)


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        out.extend(int(c) for c in read_text(f"/proc/{pid}/task/{tid}/children").split())
    return out


def descendants(pid: int) -> list[int]:
    seen: list[int] = []
    todo = children(pid)
    while todo:
        c = todo.pop()
        if c not in seen:
            seen.append(c)
            todo.extend(children(c))
    return seen


def cmdline(pid: int) -> str:
    return read_text(f"/proc/{pid}/cmdline").replace("\0", " ").strip()


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def pids_with_home(home: Path) -> list[int]:
    """Processes (of any parent) whose environment carries this AIRFLOW_HOME: everything of ours."""
    marker = f"AIRFLOW_HOME={home}\0".encode()
    found = []
    me = os.getpid()
    for pid in all_pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if marker in env:
            found.append(pid)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes
    stat = read_text(f"/proc/{pid}/stat")
    return not (stat and stat.rsplit(")", 1)[-1].split()[0] == "Z")


# --------------------------------------------------------------------------------------------- checks


@dataclass
class Results:
    checks: list[tuple[str, str, str]] = field(default_factory=list)  # (status, name, detail)
    measurements: list[tuple[str, str]] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        status = "PASS" if ok else "FAIL"
        self.checks.append((status, name, detail))
        log(f"{status}: {name}" + (f" -- {detail}" if detail else ""))
        return ok

    def pending(self, name: str, detail: str) -> None:
        self.checks.append(("PENDING", name, detail))
        log(f"PENDING: {name} -- {detail}")

    def measure(self, name: str, value: str) -> None:
        self.measurements.append((name, value))
        log(f"MEASURED: {name}: {value}")

    @property
    def failed(self) -> bool:
        return any(s == "FAIL" for s, _, _ in self.checks)


# --------------------------------------------------------------------------------------------- stack


class Stack:
    """One AIRFLOW_HOME with its api-server, dag-processor and scheduler, configured through env vars."""

    def __init__(
        self,
        name: str,
        root: Path,
        executor: str,
        template_db: Path,
        parallelism: int,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.home = root / name
        self.home.mkdir(parents=True)
        (self.home / "component-logs").mkdir()
        shutil.copytree(DAGS_SRC, self.home / "dags", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(template_db, self.home / "airflow.db")
        self.executor = executor
        self.api_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started_pids: list[int] = []
        self.async_dir = self.home / "async_executor"
        self.env = base_env(self.home)
        self.env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": executor,
                "AIRFLOW__CORE__PARALLELISM": str(parallelism),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__ASYNC_EXECUTOR__STATE_PATH": str(self.async_dir / "state.db"),
                "AIRFLOW__ASYNC_EXECUTOR__LOG_DIR": str(self.async_dir / "logs"),
                "AIRFLOW__ASYNC_EXECUTOR__KILL_GRACE": "5",
                "AIRFLOW__ASYNC_EXECUTOR__DRAIN_TIMEOUT": "5",
            }
        )
        self.env.update(extra_env or {})

    # -- processes

    def start(self, component: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        logf = open(self.home / "component-logs" / f"{component}.log", "ab")  # noqa: SIM115
        argv = [*airflow_argv(), *(args or (component,))]
        proc = subprocess.Popen(
            argv,
            env={**self.env, **(env or {})},
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logf.close()
        self.procs[component] = proc
        self.started_pids.append(proc.pid)
        log(f"[{self.name}] started {component} pid={proc.pid}")
        return proc

    def stop(self, component: str, timeout: float = 60.0) -> float | None:
        """SIGTERM the component (by pid), wait, SIGKILL its process group if it hangs. Returns exit secs."""
        proc = self.procs.pop(component, None)
        if proc is None:
            return None
        t0 = time.monotonic()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"[{self.name}] {component} pid={proc.pid} did not exit in {timeout}s; SIGKILL its group")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                return None
        took = time.monotonic() - t0
        # stragglers of that component's own process group (uvicorn workers, serve-logs, ...)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        return took

    def stop_all(self) -> None:
        for component in ("scheduler", "dag-processor", "api-server"):
            try:
                self.stop(component, timeout=40)
            except Exception as e:  # keep stopping the others
                log(f"[{self.name}] error stopping {component}: {e!r}")
        # anything left that carries our AIRFLOW_HOME (task processes in their own sessions, etc.)
        deadline = time.monotonic() + 10
        left = pids_with_home(self.home)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = [p for p in pids_with_home(self.home) if alive(p)]
        for pid in left:
            log(f"[{self.name}] leftover pid={pid} {cmdline(pid)!r}: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # -- REST API

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        ok: tuple[int, ...] = (200, 201),
        headers: dict[str, str] | None = None,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.base_url}/api/v2{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json", **(headers or {})},
        )
        # GETs only observe, so they are retried: 16 cold Airflow interpreters on 2 cores can
        # starve the api-server past one request's timeout, and its SQLite metadata database
        # can fail a read under the same load (a 500 "Database error"). That is load on
        # Airflow's own stack, not a failed check; a GET that keeps failing still fails.
        attempts = 4 if method == "GET" else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    payload = resp.read()
                    status = resp.status
                break
            except urllib.error.HTTPError as e:
                payload, status = e.read(), e.code
                if status < 500 or last:
                    break
                log(f"[{self.name}] {method} {path} -> {status}; retrying: {payload[:3000]!r}")
                time.sleep(1 + attempt)
            except (TimeoutError, urllib.error.URLError) as e:
                if last:
                    raise
                log(f"[{self.name}] {method} {path}: {e!r}; retrying (api-server busy)")
        if status not in ok:
            raise RuntimeError(f"{method} {path} -> {status}: {payload[:3000]!r}")
        return json.loads(payload) if payload else None

    def wait_api(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_running("api-server")
            try:
                self.api("GET", "/version")
                return
            except (OSError, RuntimeError):
                time.sleep(0.5)
        raise TimeoutError("api-server did not come up")

    def assert_running(self, component: str) -> None:
        proc = self.procs.get(component)
        if proc is None or proc.poll() is not None:
            tail = read_text(str(self.home / "component-logs" / f"{component}.log"))[-3000:]
            raise RuntimeError(f"{component} is not running; log tail:\n{tail}")

    def wait_dags(self, dag_ids: list[str], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        missing = list(dag_ids)
        while time.monotonic() < deadline:
            self.assert_running("dag-processor")
            missing = [d for d in missing if not self._dag_exists(d)]
            if not missing:
                return
            time.sleep(1)
        raise TimeoutError(f"DAGs never parsed: {missing}")

    def _dag_exists(self, dag_id: str) -> bool:
        try:
            self.api("GET", f"/dags/{dag_id}")
            return True
        except RuntimeError:
            return False

    def wait_scheduler_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_running("scheduler")
            try:
                health = self.api("GET", "/monitor/health")
                if health.get("scheduler", {}).get("status") == "healthy":
                    return
            except (OSError, RuntimeError):
                pass
            time.sleep(0.5)
        raise TimeoutError("scheduler never became healthy")

    def trigger(self, dag_id: str, run_id: str) -> None:
        self.api("POST", f"/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None})

    def run_state(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")  # type: ignore[no-any-return]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        out = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")
        return out["task_instances"]  # type: ignore[no-any-return]

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_running("scheduler")
            state = self.run_state(dag_id, run_id)
            if state["state"] in TERMINAL_RUN_STATES:
                return state
            time.sleep(0.2)
        raise TimeoutError(f"run {dag_id}/{run_id} did not finish in {timeout}s")

    def wait_tis(
        self, dag_id: str, run_id: str, pred: Any, timeout: float, what: str
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_running("scheduler")
            tis = self.task_instances(dag_id, run_id)
            if tis and pred(tis):
                return tis
            time.sleep(0.3)
        raise TimeoutError(f"{dag_id}/{run_id}: timed out waiting for {what}")

    def scheduler_log(self) -> str:
        return read_text(str(self.home / "component-logs" / "scheduler.log"))


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    # SQLite's default 5 s busy timeout is too short for three components and 16 tasks on
    # 2 busy cores ("database is locked" crashed a scheduler once): give it 60 s.
    site = home / "e2e_site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "e2e_db_settings.py").write_text("CONNECT_ARGS = {'timeout': 60}\n")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] = "e2e_db_settings.CONNECT_ARGS"
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "1024",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "PYTHONDONTWRITEBYTECODE": "1",
            # 16 cold interpreters on 2 busy cores can starve the api-server past the default
            # timeout (tasks then die of ReadTimeout): the same, longer, timeout for every stack
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            # The api-server's pool (5 + 10 overflow) is smaller than what 16 task starts and a
            # polling GET take at once, and a core-API request holds one connection while it
            # checks out a second (the revoked-token check). Seen here: 15 task PATCHes waited
            # on SQLite for a lock, a GET waited on the pool, all for the 30 s pool timeout,
            # then the GET got a 500. Every stack gets the same pool that cannot run dry.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "100",
            # a 500 from the api-server then says which database error it was, not just an ID
            "AIRFLOW__API__EXPOSE_STACKTRACE": "True",
            # Airflow 3.3+ runs a connection test from the UI as a workload on the executor
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        }
    )
    return env


def migrate_template(root: Path) -> Path:
    home = root / "template"
    home.mkdir(parents=True)
    env = base_env(home)
    t0 = time.monotonic()
    subprocess.run(
        [*airflow_argv(), "db", "migrate"],
        env=env,
        cwd=home,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=600,
        start_new_session=True,
    )
    log(f"db migrate took {time.monotonic() - t0:.1f}s")
    return home / "airflow.db"


# --------------------------------------------------------------------------------------------- JWT watch


class JwtWatch:
    """Samples every process's argv (what ``ps`` shows to any user) while tasks run, looking for a JWT."""

    def __init__(self, workload_dir: Path | None = None) -> None:
        self.hits: list[str] = []
        self.samples = 0
        self.workload_dir = workload_dir
        self.file_seen: dict[str, tuple[float, float]] = {}  # workload file -> first, last seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jwt-watch", daemon=True)

    def __enter__(self) -> JwtWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in all_pids():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        argv = f.read()
                except OSError:
                    continue
                if JWT_RE.search(argv):
                    self.hits.append(f"pid {pid}: {argv[:200]!r}")
            if self.workload_dir is not None:
                now = time.monotonic()
                with contextlib.suppress(OSError):
                    for name in os.listdir(self.workload_dir):
                        first = self.file_seen.get(name, (now, now))[0]
                        self.file_seen[name] = (first, now)
            self.samples += 1
            self._stop.wait(0.1)


def grep_jwt(paths: list[Path]) -> tuple[int, list[str]]:
    scanned, hits = 0, []
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for p in files:
            scanned += 1
            try:
                data = p.read_bytes()
            except OSError:
                continue
            if JWT_RE.search(data):
                hits.append(str(p))
    return scanned, hits


# --------------------------------------------------------------------------------------------- scenarios


def scheduler_pss(stack: Stack) -> dict[str, Any]:
    sched = stack.procs["scheduler"].pid
    kids = descendants(sched)
    # the executor's own helper processes: LocalExecutor's workers; our supervisor and fork server
    workers = [
        k
        for k in kids
        if re.search(
            r"LocalExecutor|async_executor\._supervisor|async_executor\._forkserver.*--control-fd", cmdline(k)
        )
    ]
    others = [k for k in kids if k not in workers]
    sm = smaps(sched)
    per = [(k, smaps(k)) for k in workers]
    # the stack's other processes (api-server, dag-processor, serve-logs) hold pages too
    stack_pids = [p.pid for p in stack.procs.values() if p.pid != sched]
    return {
        "workers_added_kb": added_kb(workers, [sched, *others, *stack_pids]),
        "workers_uss_kb": sum(m.get("Private_Clean", 0) + m.get("Private_Dirty", 0) for _, m in per),
        "per_worker": [
            (role(k), m.get("Pss", 0), m.get("Private_Clean", 0) + m.get("Private_Dirty", 0)) for k, m in per
        ],
        "scheduler_rss_kb": sm.get("Rss", 0),
        "scheduler_uss_kb": sm.get("Private_Clean", 0) + sm.get("Private_Dirty", 0),
        "scheduler_kb": pss_kb(sched) or 0,
        "workers_kb": sum(pss_kb(k) or 0 for k in workers),
        "n_workers": len(workers),
        "other_children_kb": sum(pss_kb(k) or 0 for k in others),
        "n_other_children": len(others),
    }


def present_pages(pid: int) -> set[int]:
    """Physical frame numbers of the pages ``pid`` has in memory (/proc/PID/pagemap; needs root,
    else every frame number reads as 0 and the set is empty)."""
    frames: set[int] = set()
    try:
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
            for line in maps:
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                if start >= 1 << 47:  # [vsyscall]
                    continue
                pagemap.seek(start // 4096 * 8)
                data = pagemap.read((end - start) // 4096 * 8)
                for (entry,) in struct.iter_unpack("Q", data):
                    if entry >> 63 and entry & ((1 << 55) - 1):
                        frames.add(entry & ((1 << 55) - 1))
    except OSError:
        pass
    return frames


def added_kb(pids: list[int], base: list[int]) -> int | None:
    """kB of physical pages mapped by ``pids`` and by none of ``base``: what those processes add
    to the machine (pages they share among themselves counted once, pages shared with ``base``
    not at all). ``None`` when frame numbers are not readable (not root)."""
    mine: set[int] = set()
    for pid in pids:
        mine |= present_pages(pid)
    theirs: set[int] = set()
    for pid in base:
        theirs |= present_pages(pid)
    if not theirs:
        return None
    return len(mine - theirs) * 4


def role(pid: int) -> str:
    """A short name for one of the executor's helper processes (by its command line)."""
    line = cmdline(pid)
    for pattern, name in (
        ("_forkserver", "fork server"),
        ("_supervisor", "supervisor"),
        ("LocalExecutor", "LocalExecutor worker"),
    ):
        if pattern in line:
            return name
    return line[:40]


PROBE = r"""
import json, sys, time

def mem():
    out = {}
    for line in open("/proc/self/smaps_rollup"):
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1])
    return {"rss": out["Rss"], "uss": out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)}

import airflow.executors.base_executor  # what every executor pays; the scheduler has it already
import airflow.executors.local_executor
# and what every executor's constructor imports (Airflow 3: the JWT signing code, ~2.5 MB)
airflow.executors.base_executor.BaseExecutor(parallelism=1)
m0 = mem()
from async_executor.airflow import AsyncLocalExecutor
m1 = mem()
ex = AsyncLocalExecutor(parallelism=int(sys.argv[1]))
ex.start()
time.sleep(2.0)
for _ in range(20):
    ex.heartbeat()
m2 = mem()
ex.end()
print("PROBE " + json.dumps({"base": m0, "imported": m1, "started": m2}))
"""


def probe_executor_memory(stack: Stack, res: Results, parallelism: int) -> None:
    """Executor-owned memory, measured directly: RSS/USS of a Python process before and after
    importing our adapter and start()ing it at ``parallelism`` (no tasks), Airflow already imported."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(parallelism)],
        env=stack.env,
        cwd=stack.home,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PROBE ")), None)
    if proc.returncode != 0 or line is None:
        res.check(f"[{stack.name}] executor memory probe ran", False, (proc.stdout + proc.stderr)[-1500:])
        return
    m = json.loads(line[len("PROBE ") :])
    imp = m["imported"]["rss"] - m["base"]["rss"]
    started = m["started"]["rss"] - m["imported"]["rss"]
    uss = m["started"]["uss"] - m["base"]["uss"]
    res.measure(
        f"[{stack.name}] executor-owned memory @ parallelism {parallelism}, idle (probe)",
        f"import +{imp / 1024:.1f} MB RSS, start() +{started / 1024:.1f} MB RSS; "
        f"total +{(imp + started) / 1024:.1f} MB RSS / +{uss / 1024:.1f} MB USS "
        f"(over a process that already imported Airflow's executors)",
    )
    stack.probe = getattr(stack, "probe", {})  # type: ignore[attr-defined]
    stack.probe[parallelism] = (imp + started, uss)  # type: ignore[attr-defined]


def compile_our_package() -> None:
    """Write our package's bytecode, as ``pip install`` does. The stacks run with
    ``PYTHONDONTWRITEBYTECODE`` and the test sessions install the package editable, so without
    this every process that imports it (the scheduler, the supervisor, the fork server) would
    compile it from source: ~30 ms of CPU each, and ~3.5 MB of compiler garbage left in the heap
    that the memory scenarios would charge to the executor. Airflow's own modules have bytecode
    from their wheel install."""
    import compileall

    import async_executor

    pkg = Path(async_executor.__file__).parent
    if not compileall.compile_dir(str(pkg), quiet=1):
        raise RuntimeError(f"could not compile {pkg}")
    log(f"bytecode written for {pkg}")


def stop_and_check(stack: Stack, res: Results) -> None:
    stack.stop_all()
    left = [p for p in pids_with_home(stack.home) if alive(p)]
    res.check(f"[{stack.name}] every process of this stack is gone after shutdown", not left, str(left))


def start_stack(stack: Stack, dag_ids: list[str]) -> None:
    stack.start(
        "api-server", "api-server", "--host", "127.0.0.1", "--port", str(stack.api_port), "--workers", "1"
    )
    stack.start("dag-processor")
    stack.wait_api()
    stack.wait_dags(dag_ids)
    stack.start("scheduler")
    stack.wait_scheduler_healthy()


def restart_scheduler(stack: Stack, parallelism: int) -> None:
    stack.stop("scheduler")
    stack.env["AIRFLOW__CORE__PARALLELISM"] = str(parallelism)
    stack.start("scheduler")
    stack.wait_scheduler_healthy()


def fmt_kb(kb: int | None) -> str:
    return "n/a (not root)" if kb is None else f"{kb / 1024:.1f} MB"


def measure_idle_pss(stack: Stack, res: Results, label: str, settle: float, after: bool = False) -> None:
    time.sleep(settle)
    m = scheduler_pss(stack)
    par = stack.env["AIRFLOW__CORE__PARALLELISM"]
    res.measure(
        f"{label} idle PSS @ parallelism {par}",
        f"scheduler {m['scheduler_kb'] / 1024:.1f} MB + executor workers {m['workers_kb'] / 1024:.1f} MB "
        f"({m['n_workers']} procs) = {(m['scheduler_kb'] + m['workers_kb']) / 1024:.1f} MB; "
        f"scheduler RSS {m['scheduler_rss_kb'] / 1024:.1f} MB, USS {m['scheduler_uss_kb'] / 1024:.1f} MB "
        f"[other children excluded: {m['n_other_children']} procs, {m['other_children_kb'] / 1024:.1f} MB]; "
        f"executor workers USS {m['workers_uss_kb'] / 1024:.1f} MB, pages they hold that no other "
        f"process of the stack does: {fmt_kb(m['workers_added_kb'])}; per process (PSS/USS MB): "
        + ", ".join(f"{r} {p / 1024:.1f}/{u / 1024:.1f}" for r, p, u in m["per_worker"]),
    )
    attr = "pss_after" if after else "pss"
    setattr(stack, attr, getattr(stack, attr, {}))
    getattr(stack, attr)[int(par)] = m


def cpu_busy_seconds() -> float:
    """System-wide busy CPU time (all cores) from /proc/stat."""
    fields = [int(x) for x in read_text("/proc/stat").splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` plus its children that it has reaped (utime+stime+cutime+cstime)."""
    stat = read_text(f"/proc/{pid}/stat")
    if not stat:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def stack_cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far by one stack, by role, counting only its own processes.

    Every live process of the stack plus the children each has reaped: a task process is
    counted once, in whichever process waited for it.  Unlike the machine-wide figure this
    is not inflated by anything else running on the machine.  Roles: each component, and
    ``executor+tasks`` for everything below the scheduler (LocalExecutor's workers and their
    tasks; our supervisor, fork server and tasks).
    """
    out: dict[str, float] = {}
    for name, proc in stack.procs.items():
        out[name] = process_cpu(proc.pid)
        below = "executor+tasks" if name == "scheduler" else name
        for pid in descendants(proc.pid):  # found by parentage: setproctitle can hide the environ
            out[below] = out.get(below, 0.0) + process_cpu(pid)
    return out


def helper_processes(stack: Stack, module: str) -> list[int]:
    """Live descendants of the scheduler running ``async_executor.<module>``."""
    sched = stack.procs["scheduler"].pid
    return [k for k in descendants(sched) if f"async_executor.{module}" in cmdline(k) and alive(k)]


def check_launch_path(stack: Stack, res: Results, warm: bool) -> None:
    """Warm start really served the tasks (or, switched off, never started a fork server)."""
    logs = "".join(read_text(str(p)) for p in stack.async_dir.glob("supervisor-*.log"))
    # warm tasks are forked from the fork server, so its command line is not enough to find it
    started = [int(pid) for pid in re.findall(r"fork server pid (\d+) ready", logs)]
    servers = [pid for pid in helper_processes(stack, "_forkserver") if "--control-fd" in cmdline(pid)]
    if warm:
        res.check(
            f"[{stack.name}] one fork server, started once, runs under the supervisor after the fan-out",
            len(started) == 1 and servers == started,
            f"started: {started}, running: {servers}",
        )
        res.check(
            f"[{stack.name}] the fork server preloaded Airflow without errors",
            "fork server pid" in logs and "could not preload" not in logs and "switched off" not in logs,
            logs[-1500:],
        )
    else:
        res.check(f"[{stack.name}] warm start off: no fork server", not servers, f"fork servers: {servers}")


def scenario_fanout(stack: Stack, res: Results, runs: int) -> list[float]:
    walls = []
    for i in range(1, runs + 1):
        run_id = f"fanout_{i}_{secrets.token_hex(3)}"
        t0 = time.monotonic()
        c0, s0 = cpu_busy_seconds(), stack_cpu(stack)
        stack.trigger("e2e_fanout", run_id)
        state = stack.wait_run("e2e_fanout", run_id, timeout=600)
        wall = time.monotonic() - t0
        cpu = cpu_busy_seconds() - c0
        time.sleep(1.0)  # let the last task processes exit and be reaped before counting
        s1 = stack_cpu(stack)
        own = {role: s1.get(role, 0.0) - s0.get(role, 0.0) for role in sorted(set(s0) | set(s1))}
        res.measure(
            f"[{stack.name}] fan-out run {i} CPU, whole machine",
            f"{cpu:.1f} CPU-s = {cpu / 40:.2f} CPU-s per task ({os.cpu_count()} cores)",
        )
        res.measure(
            f"[{stack.name}] fan-out run {i} CPU, this stack's processes",
            f"{sum(own.values()):.1f} CPU-s = {sum(own.values()) / 40:.2f} per task ("
            + ", ".join(f"{role} {sec:.1f}" for role, sec in own.items())
            + ")",
        )
        tis = stack.task_instances("e2e_fanout", run_id)
        ok = [t for t in tis if t["state"] == "success"]
        res.check(
            f"[{stack.name}] fan-out run {i}: 40/40 tasks succeeded",
            state["state"] == "success" and len(ok) == 40 and len(tis) == 40,
            f"run={state['state']} success={len(ok)}/{len(tis)}",
        )
        if len(ok) != len(tis):
            bad = [t for t in tis if t["state"] != "success"]
            res.measure(
                f"[{stack.name}] fan-out run {i} tasks not successful",
                ", ".join(f"{t['task_id']}={t['state']}" for t in bad),
            )
            logs = sorted((stack.async_dir / "logs").glob(f"*{bad[0]['task_id']}*"), key=os.path.getmtime)
            if logs:
                log(f"[{stack.name}] tail of {logs[-1]}:\n{read_text(str(logs[-1]))[-3000:]}")
        res.measure(f"[{stack.name}] fan-out run {i} wall (trigger -> run terminal, polled)", f"{wall:.2f}s")
        lat = _latencies(tis)
        if lat:
            res.measure(f"[{stack.name}] fan-out run {i} per task", lat)
        walls.append(wall)
    return walls


def _parse_ts(value: str | None) -> float | None:
    if not value:
        return None
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _latencies(tis: list[dict[str, Any]]) -> str:
    """Median / max of queued->start (executor launch + interpreter start-up) and start->end."""
    import statistics

    q2s, s2e = [], []
    for t in tis:
        q, st, en = (
            _parse_ts(t.get("queued_when")),
            _parse_ts(t.get("start_date")),
            _parse_ts(t.get("end_date")),
        )
        if q is not None and st is not None:
            q2s.append(st - q)
        if st is not None and en is not None:
            s2e.append(en - st)
    if not q2s or not s2e:
        return ""
    return (
        f"queued->running median {statistics.median(q2s):.2f}s max {max(q2s):.2f}s; "
        f"running->done median {statistics.median(s2e):.2f}s max {max(s2e):.2f}s"
    )


def task_procs(home: Path, needle: str) -> list[int]:
    return [p for p in pids_with_home(home) if needle in cmdline(p) and alive(p)]


def scenario_failures(stack: Stack, res: Results) -> None:
    dag = "e2e_failures"
    run_id = f"failures_{secrets.token_hex(3)}"
    stack.trigger(dag, run_id)

    def by_id(tis: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {t["task_id"]: t for t in tis}

    stack.wait_tis(
        dag, run_id, lambda tis: by_id(tis)["killed"]["state"] == "running", 180, "'killed' running"
    )
    deadline = time.monotonic() + 60
    while not task_procs(stack.home, "sleep 311") and time.monotonic() < deadline:
        time.sleep(0.2)
    pids_before = task_procs(stack.home, "sleep 311")
    res.check(
        f"[{stack.name}] long task's process is visible before marking it failed",
        bool(pids_before),
        str(pids_before),
    )
    time.sleep(2)
    # the api-server's own executor instance serves a running task's log from our capture
    if stack.executor != LOCAL_EXECUTOR:
        logs = stack.api("GET", f"/dags/{dag}/dagRuns/{run_id}/taskInstances/killed/logs/1?full_content=true")
        text = json.dumps(logs)
        res.check(
            f"[{stack.name}] api-server shows the running task's captured output (get_task_log)",
            "Captured output of the task process" in text and "sleep 311" in text,
            text[:300] if "Captured output" not in text else "",
        )
    stack.api("PATCH", f"/dags/{dag}/dagRuns/{run_id}/taskInstances/killed", {"new_state": "failed"})
    t_mark = time.monotonic()
    state = stack.wait_run(dag, run_id, timeout=300)
    final = {t["task_id"]: t["state"] for t in stack.task_instances(dag, run_id)}
    expected = {"ok": "success", "fails": "failed", "times_out": "failed", "killed": "failed"}
    res.check(f"[{stack.name}] failures DAG final task states", final == expected, f"got {final}")
    res.check(f"[{stack.name}] failures DAG run state is failed", state["state"] == "failed", state["state"])
    # the task process of the marked-failed task must go away (supervisor gets 409 on heartbeat, kills it)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        task_procs(stack.home, "sleep 311") or task_procs(stack.home, "sleep 307")
    ):
        time.sleep(0.5)
    left = task_procs(stack.home, "sleep 311") + task_procs(stack.home, "sleep 307")
    res.check(f"[{stack.name}] no leftover task processes after failures DAG", not left, f"left={left}")
    if not left:
        res.measure(
            f"[{stack.name}] marked-failed task gone after", f"{time.monotonic() - t_mark:.1f}s (upper bound)"
        )


def scenario_adopt(stack: Stack, res: Results, drain_timeout: float, kill_grace: float) -> None:
    dag = "e2e_adopt"
    run_id = f"adopt_{secrets.token_hex(3)}"
    stack.trigger(dag, run_id)
    stack.wait_tis(
        dag, run_id, lambda tis: all(t["state"] == "running" for t in tis), 180, "all 4 tasks running"
    )
    deadline = time.monotonic() + 60
    while len(task_procs(stack.home, "sleep 40")) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    before = task_procs(stack.home, "sleep 40")
    log(f"[{stack.name}] adopt: task processes before scheduler SIGTERM: {before}")
    sched_log_offset = len(stack.scheduler_log())
    hard_limit = drain_timeout + kill_grace + 60  # a hang detector, not a performance threshold
    took = stack.stop("scheduler", timeout=hard_limit)
    res.check(
        f"[{stack.name}] scheduler exits on SIGTERM (executor end() is bounded)",
        took is not None,
        f"exited after {took:.1f}s" if took is not None else f"still alive after {hard_limit:.0f}s",
    )
    if took is not None:
        res.measure(
            f"[{stack.name}] scheduler SIGTERM -> exit", f"{took:.2f}s (drain_timeout={drain_timeout}s)"
        )
    survivors = [p for p in before if alive(p)]
    log(f"[{stack.name}] adopt: task processes alive after scheduler exit: {survivors}")
    stack.start("scheduler")
    stack.wait_scheduler_healthy()
    state = stack.wait_run(dag, run_id, timeout=300)
    tis = stack.task_instances(dag, run_id)
    tries = {t["task_id"]: (t["state"], t["try_number"]) for t in tis}
    new_log = stack.scheduler_log()[sched_log_offset:]
    adopted_all = state["state"] == "success" and all(s == "success" and n == 1 for s, n in tries.values())
    if adopted_all:
        res.check(
            f"[{stack.name}] adoption: tasks survived the restart, adopted, not re-run", True, str(tries)
        )
    elif "adoption unavailable" in new_log or "journal=unavailable" in new_log:
        res.pending(
            f"[{stack.name}] adoption after scheduler restart",
            "the executor reports adoption unavailable (core journal not landed yet); "
            f"survivors after SIGTERM={len(survivors)}/{len(before)}; run={state['state']} tries={tries}",
        )
    else:
        res.check(
            f"[{stack.name}] adoption: tasks adopted, not re-run",
            False,
            f"run={state['state']} tries={tries}",
        )
    left = task_procs(stack.home, "sleep 40")
    res.check(f"[{stack.name}] no leftover task processes after adoption scenario", not left, f"left={left}")


def scenario_callback(stack: Stack, res: Results) -> None:
    """A SyncCallback deadline alert: Airflow sends an ExecuteCallback workload to the executor."""
    marker = stack.home / "callback-marker"
    run_id = f"callback_{secrets.token_hex(3)}"
    offset = len(stack.scheduler_log())
    stack.trigger("e2e_callback", run_id)
    deadline = time.monotonic() + 180
    while not marker.exists() and time.monotonic() < deadline:
        stack.assert_running("scheduler")
        time.sleep(0.5)
    res.check(
        f"[{stack.name}] deadline SyncCallback ran through the executor (ExecuteCallback)",
        marker.exists(),
        read_text(str(marker)).strip() if marker.exists() else "no marker after 180s",
    )
    deadline = time.monotonic() + 60
    ok = False
    while time.monotonic() < deadline and not ok:
        ok = re.search(r"Callback \S+ completed successfully", stack.scheduler_log()[offset:]) is not None
        time.sleep(0.5)
    res.check(f"[{stack.name}] scheduler recorded the callback as successful", ok)
    stack.wait_run("e2e_callback", run_id, timeout=180)


def supports_connection_tests() -> bool:
    """Whether this Airflow dispatches connection tests to executors (3.3+)."""
    try:
        from airflow.executors import workloads
    except ImportError:
        return False
    return hasattr(workloads, "TestConnection")


def scenario_connection_test(stack: Stack, res: Results) -> None:
    """Two ``fs`` connection tests from the REST API, as the UI's Test button sends them.

    The scheduler hands each to the executor as a ``TestConnection`` workload; the test runs
    in a task process there and reports its verdict to the API server itself. One path
    exists on this machine and one does not: the verdicts show the test ran where the
    executor runs it (the path is checked there), and that a failing test is told apart.
    """
    present = stack.home / "dags"
    missing = stack.home / f"no-such-dir-{secrets.token_hex(3)}"
    offset = len(stack.scheduler_log())
    tokens = {}
    for name, path in (("present", present), ("missing", missing)):
        body = {
            "connection_id": f"e2e_fs_{name}",
            "conn_type": "fs",
            "extra": json.dumps({"path": str(path)}),
        }
        queued = stack.api("POST", "/connections/enqueue-test", body, ok=(202,))
        tokens[name] = queued["token"]
    results: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 180
    while len(results) < len(tokens) and time.monotonic() < deadline:
        stack.assert_running("scheduler")
        for name, token in tokens.items():
            if name in results:
                continue
            got = stack.api(
                "GET", "/connections/enqueue-test", headers={"Airflow-Connection-Test-Token": token}
            )
            if got["state"] in ("success", "failed"):
                results[name] = got
        time.sleep(0.5)
    ok_result, bad_result = results.get("present", {}), results.get("missing", {})
    res.check(
        f"[{stack.name}] connection test of an existing path succeeded (TestConnection workload)",
        ok_result.get("state") == "success" and str(present) in (ok_result.get("result_message") or ""),
        repr(ok_result) if ok_result else "no verdict after 180s",
    )
    res.check(
        f"[{stack.name}] connection test of a missing path failed with the hook's reason",
        bad_result.get("state") == "failed" and "does not exist" in (bad_result.get("result_message") or ""),
        repr(bad_result) if bad_result else "no verdict after 180s",
    )
    refused = "does not support connection testing" in stack.scheduler_log()[offset:]
    res.check(f"[{stack.name}] the scheduler handed the tests to this executor", not refused)
    logs = sorted((stack.async_dir / "logs").rglob("*ConnectionTestKey*"))
    res.check(
        f"[{stack.name}] each connection test ran as a task of this executor (its log file)",
        len(logs) >= 2,
        f"{len(logs)} log files: {[p.name for p in logs[:4]]}",
    )


TEAM = "team_e2e"
#: One task that returns (as its XCom) the Execution API URL its supervisor was given.
API_URL_DAG = """
import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime.datetime(2024, 1, 1), catchup=False):
    BashOperator(task_id="api_url", bash_command='echo "$AIRFLOW__CORE__EXECUTION_API_SERVER_URL"')
"""


def supports_teams() -> bool:
    """Whether this Airflow has team executors ([core] multi_team) and our adapter takes part."""
    from async_executor._airflow._executor import MULTI_TEAM

    return MULTI_TEAM


def teams_stack(root: Path, executor: str, template_db: Path, parallelism: int) -> Stack:
    """A multi-team Airflow: our executor for everyone, and another one of it for TEAM.

    TEAM's DAGs live in a bundle of their own; its Execution API URL is a second spelling of
    the same api-server (``localhost`` for ``127.0.0.1``), set only in TEAM's config.
    """
    stack = Stack("teams", root, executor, template_db, parallelism)
    team_dags = stack.home / "team_dags"
    team_dags.mkdir()
    (stack.home / "dags" / "e2e_api_url.py").write_text(API_URL_DAG.format(dag_id="e2e_api_url"))
    (team_dags / "e2e_team_api_url.py").write_text(API_URL_DAG.format(dag_id="e2e_team_api_url"))
    local_bundle = "airflow.dag_processing.bundles.local.LocalDagBundle"
    bundles = [
        {"name": "dags-folder", "classpath": local_bundle, "kwargs": {}},
        {
            "name": "team-dags",
            "classpath": local_bundle,
            "kwargs": {"path": str(team_dags)},
            "team_name": TEAM,
        },
    ]
    stack.env.update(
        {
            "AIRFLOW__CORE__MULTI_TEAM": "True",
            "AIRFLOW__CORE__EXECUTOR": f"{executor};{TEAM}={executor}",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
            f"AIRFLOW__{TEAM.upper()}___CORE__EXECUTION_API_SERVER_URL": (
                f"http://localhost:{stack.api_port}/execution/"
            ),
        }
    )
    subprocess.run(
        [*airflow_argv(), "teams", "create", TEAM],
        env=stack.env,
        cwd=stack.home,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=300,
    )
    return stack


def scenario_teams(stack: Stack, res: Results) -> None:
    """One task of a global DAG and one of TEAM's: each runs on its own executor, with its URL."""
    run_id = f"teams_{secrets.token_hex(3)}"
    expected = {
        "e2e_api_url": (stack.env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"], stack.async_dir / "logs"),
        "e2e_team_api_url": (
            stack.env[f"AIRFLOW__{TEAM.upper()}___CORE__EXECUTION_API_SERVER_URL"],
            stack.async_dir / "teams" / TEAM / "logs",
        ),
    }
    for dag_id in expected:
        stack.trigger(dag_id, run_id)
    for dag_id, (url, log_dir) in expected.items():
        state = stack.wait_run(dag_id, run_id, timeout=300)
        res.check(f"[{stack.name}] {dag_id} succeeded", state["state"] == "success", state["state"])
        xcom = stack.api(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/api_url/xcomEntries/return_value"
        )
        got = str(xcom.get("value")).strip().strip('"')
        res.check(
            f"[{stack.name}] {dag_id}: its task's supervisor was given {url}", got == url, f"got {got!r}"
        )
        logs = sorted(p.name for p in log_dir.glob(f"{dag_id}__*")) if log_dir.exists() else []
        res.check(
            f"[{stack.name}] {dag_id} ran on the executor whose logs are {log_dir}", bool(logs), str(logs)
        )
    started = re.findall(r"async_executor started( for team '\w+')?:", stack.scheduler_log())
    res.check(
        f"[{stack.name}] the scheduler started two of our executors, one of them {TEAM}'s",
        sorted(started) == ["", f" for team '{TEAM}'"],
        str(started),
    )


def scenario_jwt(stack: Stack, res: Results, watch: JwtWatch) -> None:
    res.check(
        "JWT regex self-test",
        bool(JWT_RE.search(b"x eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiIxMjM0NTYifQ.c2lnbmF0dXJlX3Rlc3Q y")),
    )
    res.check(
        f"[{stack.name}] no JWT in any process argv (ps) while tasks ran",
        not watch.hits,
        f"{watch.samples} samples of all processes; hits={watch.hits[:3]}",
    )
    scanned, hits = grep_jwt([stack.async_dir]) if stack.async_dir.exists() else (0, [])
    res.check(
        f"[{stack.name}] no JWT in our logs / state dir ({stack.async_dir})",
        not hits and scanned > 0,
        f"scanned {scanned} files; hits={hits[:5]}",
    )
    if watch.file_seen:
        import statistics

        lives = [last - first for first, last in watch.file_seen.values()]
        res.measure(
            f"[{stack.name}] workload file lifetime (sampled every 0.1 s)",
            f"{len(lives)} files seen; median {statistics.median(lives):.2f}s, max {max(lives):.2f}s "
            "(created at launch, removed once the task process has read it)",
        )
    leftovers = list(stack.async_dir.rglob("*.json")) if stack.async_dir.exists() else []
    res.check(f"[{stack.name}] no workload files left behind", not leftovers, str(leftovers[:5]))


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--executor", default="async_executor.airflow.AsyncLocalExecutor", help="module path or LocalExecutor"
    )
    ap.add_argument("--parallelism", type=int, default=16)
    ap.add_argument("--pss-parallelism", default="16,128", help="comma list; idle scheduler PSS at each")
    ap.add_argument("--no-compare-local", action="store_true", help="skip the LocalExecutor side-by-side run")
    ap.add_argument("--no-compare-cold", action="store_true", help="skip the fan-out with warm start off")
    ap.add_argument("--scenarios", default="fanout,failures,callback,connection_test,adopt,jwt,pss,teams")
    ap.add_argument("--fanout-runs", type=int, default=2)
    ap.add_argument("--require-adoption", action="store_true", help="treat pending adoption as a failure")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the temporary AIRFLOW_HOMEs")
    ap.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for our executor's warm stack (e.g. AIRFLOW__ASYNC_EXECUTOR__QUEUE_AHEAD=0)",
    )
    args = ap.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:  # run the finally (stop what we started)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)

    scenarios = set(args.scenarios.split(","))
    pss_pars = [int(p) for p in args.pss_parallelism.split(",") if p]
    root = args.workdir or Path(tempfile.mkdtemp(prefix="af-e2e-"))
    root.mkdir(parents=True, exist_ok=True)
    log(f"workdir {root}; python {sys.executable}")
    af_version = subprocess.run(
        [sys.executable, "-c", "import airflow; print(airflow.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    log(f"airflow {af_version}")
    compile_our_package()

    res = Results()
    stacks: list[Stack] = []
    walls: dict[str, list[float]] = {}
    pss: dict[str, dict[int, dict[str, int]]] = {}
    probes: dict[int, tuple[int, int]] = {}
    try:
        template_db = migrate_template(root)
        plan: list[tuple[str, str, dict[str, str]]] = []
        if not args.no_compare_local and args.executor != LOCAL_EXECUTOR:
            plan.append(("local", LOCAL_EXECUTOR, {}))
        if not args.no_compare_cold and args.executor != LOCAL_EXECUTOR and "fanout" in scenarios:
            plan.append(("cold", args.executor, {"AIRFLOW__ASYNC_EXECUTOR__WARM_START": "False"}))
        ours_env = dict(item.split("=", 1) for item in args.ours_env)
        plan.append(("ours" if args.executor != LOCAL_EXECUTOR else "local", args.executor, ours_env))
        for name, executor, extra_env in plan:
            stack = Stack(name, root, executor, template_db, args.parallelism, extra_env)
            stacks.append(stack)
            is_ours = executor == args.executor and name == "ours"
            if name == "cold":  # only the fan-out, to compare launch paths
                log(f"=== stack {name}: executor {executor} without warm start ===")
                start_stack(stack, ["e2e_fanout"])
                walls[name] = scenario_fanout(stack, res, args.fanout_runs)
                check_launch_path(stack, res, warm=False)
                stack.stop_all()
                continue
            log(f"=== stack {name}: executor {executor}, parallelism {args.parallelism} ===")
            start_stack(stack, ["e2e_fanout", "e2e_failures", "e2e_adopt", "e2e_callback"])
            with JwtWatch(stack.async_dir / "workloads") as watch:
                if "pss" in scenarios and args.parallelism in pss_pars:
                    measure_idle_pss(stack, res, name, settle=5)
                if "fanout" in scenarios:
                    walls[name] = scenario_fanout(stack, res, args.fanout_runs)
                    if executor != LOCAL_EXECUTOR:
                        check_launch_path(stack, res, warm=True)
                    if "pss" in scenarios:
                        measure_idle_pss(stack, res, f"{name} after fan-out", settle=3, after=True)
                if is_ours and "failures" in scenarios:
                    scenario_failures(stack, res)
                if is_ours and "callback" in scenarios:
                    scenario_callback(stack, res)
                if is_ours and "connection_test" in scenarios and supports_connection_tests():
                    scenario_connection_test(stack, res)
                if is_ours and "adopt" in scenarios:
                    drain = float(stack.env["AIRFLOW__ASYNC_EXECUTOR__DRAIN_TIMEOUT"])
                    grace = float(stack.env["AIRFLOW__ASYNC_EXECUTOR__KILL_GRACE"])
                    scenario_adopt(stack, res, drain, grace)
            if is_ours and "jwt" in scenarios and executor != LOCAL_EXECUTOR:
                scenario_jwt(stack, res, watch)
            if "pss" in scenarios and executor != LOCAL_EXECUTOR:
                for par in pss_pars:
                    probe_executor_memory(stack, res, par)
            if "pss" in scenarios:
                for par in pss_pars:
                    if par == args.parallelism:
                        continue
                    restart_scheduler(stack, par)
                    measure_idle_pss(stack, res, name, settle=5)
            pss[name] = getattr(stack, "pss", {})
            if getattr(stack, "pss_after", None):
                pss[f"{name}+"] = stack.pss_after  # type: ignore[attr-defined]
            probes.update(getattr(stack, "probe", {}))
            stop_and_check(stack, res)
        if "teams" in scenarios and args.executor != LOCAL_EXECUTOR and supports_teams():
            log(f"=== stack teams: {args.executor} for all, and another for {TEAM} ===")
            stack = teams_stack(root, args.executor, template_db, args.parallelism)
            stacks.append(stack)
            start_stack(stack, ["e2e_api_url", "e2e_team_api_url"])
            scenario_teams(stack, res)
            stop_and_check(stack, res)
            ended = re.search(
                rf"for team '{TEAM}': ended; launched (\d+) task\(s\) \((\d+) warm\)", stack.scheduler_log()
            )
            res.check(
                f"[teams] {TEAM}'s task started warm (its Execution API URL does not make it cold)",
                ended is not None and ended.group(1) == ended.group(2) != "0",
                ended.group(0) if ended else "no end line for the team's executor in the scheduler log",
            )
    except Exception as e:
        import traceback

        traceback.print_exc()
        res.check("harness ran to completion", False, repr(e))
    finally:
        for stack in stacks:
            stack.stop_all()
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)

    print_summary(res, walls, pss, probes, args.parallelism)
    return 1 if res.failed or (args.require_adoption and any(s == "PENDING" for s, _, _ in res.checks)) else 0


def print_summary(
    res: Results,
    walls: dict[str, list[float]],
    pss: dict[str, dict[int, dict[str, int]]],
    probes: dict[int, tuple[int, int]],
    par: int,
) -> None:
    print("\n" + "=" * 100)
    print("CHECKS")
    for status, name, detail in res.checks:
        print(f"  {status:8} {name}" + (f"  ({detail})" if detail and status != "PASS" else ""))
    if walls:
        print(
            f"\nFAN-OUT (40 BashOperator tasks, parallelism {par}), wall from trigger to terminal run state:"
        )
        for name, ws in walls.items():
            print(f"  {name:6} " + "  ".join(f"run{i + 1}={w:6.2f}s" for i, w in enumerate(ws)))
        for name in ("cold", "ours"):
            if "local" in walls and name in walls:
                ratios = [o / lo for o, lo in zip(walls[name], walls["local"], strict=False) if lo > 0]
                label = "warm" if name == "ours" else name
                print(
                    f"  {label}/local: "
                    + "  ".join(f"run{i + 1}={r:.2f}x" for i, r in enumerate(ratios))
                    + ("   (target <= 0.8x)" if name == "ours" else "")
                )
    if pss:
        print("\nIDLE PSS (no tasks running); 'other children' (serve-logs etc.) excluded:")
        for name, by_par in pss.items():
            for p, m in sorted(by_par.items()):
                print(
                    f"  {name:6} parallelism {p:4}: scheduler {m['scheduler_kb'] / 1024:7.1f} MB   "
                    f"executor workers {m['workers_kb'] / 1024:7.1f} MB ({m['n_workers']:3} procs)   "
                    f"total {(m['scheduler_kb'] + m['workers_kb']) / 1024:7.1f} MB"
                )
        if "local" in pss and "ours" in pss:
            for p in sorted(set(pss["local"]) & set(pss["ours"])):
                lo, ou = pss["local"][p], pss["ours"][p]
                print(
                    f"  parallelism {p}: executor-owned memory estimate: ours = scheduler RSS minus "
                    f"LocalExecutor's scheduler RSS = "
                    f"{(ou['scheduler_rss_kb'] - lo['scheduler_rss_kb']) / 1024:+.1f} MB; "
                    f"LocalExecutor = its {lo['n_workers']} workers' PSS {lo['workers_kb'] / 1024:.1f} MB"
                )
        if "local+" in pss and "ours+" in pss:
            for p in sorted(set(pss["local+"]) & set(pss["ours+"])):
                lo, ou = pss["local+"][p], pss["ours+"][p]
                in_scheduler = probes.get(p, (0, 0))[0]
                owned = ou["workers_kb"] + in_scheduler
                ratio = owned / lo["workers_kb"] if lo["workers_kb"] else float("nan")
                # in the scheduler: the probe's RSS growth (its USS is meaningless once start()
                # forks a fork server: the pages it then shares stop being private)
                uss_ratio = (
                    (ou["workers_uss_kb"] + in_scheduler) / lo["workers_uss_kb"]
                    if lo["workers_uss_kb"]
                    else float("nan")
                )
                print(
                    f"  parallelism {p}, idle after the fan-out, USS: ours supervisor + fork server "
                    f"{ou['workers_uss_kb'] / 1024:.1f} MB + in-scheduler {in_scheduler / 1024:.1f} MB RSS = "
                    f"{(ou['workers_uss_kb'] + in_scheduler) / 1024:.1f} MB; LocalExecutor's workers "
                    f"{lo['workers_uss_kb'] / 1024:.1f} MB; ratio {uss_ratio:.3f} (target < 0.20)"
                )
                if ou.get("workers_added_kb") is not None and lo.get("workers_added_kb"):
                    ours_added = ou["workers_added_kb"] + in_scheduler
                    print(
                        f"  parallelism {p}, idle after the fan-out, pages only the executor's processes "
                        f"hold (none of the stack's others): ours {ou['workers_added_kb'] / 1024:.1f} MB + "
                        f"in-scheduler {in_scheduler / 1024:.1f} MB = {ours_added / 1024:.1f} MB; "
                        f"LocalExecutor's workers {lo['workers_added_kb'] / 1024:.1f} MB; ratio "
                        f"{ours_added / lo['workers_added_kb']:.3f} (target < 0.20)"
                    )
                print(
                    f"  parallelism {p}, idle after the fan-out: executor-owned memory, ours = supervisor + "
                    f"fork server PSS {ou['workers_kb'] / 1024:.1f} MB + in-scheduler "
                    f"{in_scheduler / 1024:.1f} MB RSS = {owned / 1024:.1f} MB; LocalExecutor's "
                    f"{lo['n_workers']} workers {lo['workers_kb'] / 1024:.1f} MB PSS; "
                    f"ratio {ratio:.3f} (target < 0.20)"
                )
    for p, (rss, uss) in sorted(probes.items()):
        local = pss.get("local", {}).get(p)
        versus = (
            f"; LocalExecutor's {local['n_workers']} idle workers: {local['workers_kb'] / 1024:.1f} MB PSS"
            if local
            else ""
        )
        print(
            f"  executor-owned memory, ours, parallelism {p}, idle: +{rss / 1024:.1f} MB RSS "
            f"(+{uss / 1024:.1f} MB USS) over a process with Airflow imported{versus}"
        )
    if res.measurements:
        print("\nALL MEASUREMENTS")
        for name, value in res.measurements:
            print(f"  {name}: {value}")
    print("=" * 100)
    print("RESULT:", "FAILED" if res.failed else "OK", flush=True)


if __name__ == "__main__":
    sys.exit(main())
