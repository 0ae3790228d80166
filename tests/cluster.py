"""The production shape on one machine: real nginx (config rendered from deploy/) in front of
``sentri serve`` subprocesses sharing a database and a private Redis.

Rendering changes only what must differ in a test: the listen address, the upstream ports,
the file paths (pid, logs, temp folders) and ``worker_shutdown_timeout`` (seconds, not 30).
Every other directive is the operator's file as shipped.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from typing import Dict, List, Optional

from .services import free_port, stop_process, wait_for_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
NGINX = os.environ.get("SENTRI_TEST_NGINX", "nginx")

PORT_ATTEMPTS = 5  # a port chosen free, then taken before the child bound it: try another

_INSTANCES = re.compile(r"(    # BEGIN instances[^\n]*\n)(.*?)(    # END instances\n)", re.S)


def render_site(listen_port: int, upstream_ports: List[int], log_dir: str) -> str:
    with open(os.path.join(DEPLOY, "nginx", "sentri.conf"), encoding="utf-8") as handle:
        site = handle.read()
    servers = "".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n" for port in upstream_ports)
    site, replaced = _INSTANCES.subn(lambda match: match.group(1) + servers + match.group(3), site)
    assert replaced == 1, "deploy/nginx/sentri.conf lost its BEGIN/END instances markers"
    site = _replace_once(site, "    listen 80;\n", f"    listen 127.0.0.1:{listen_port};\n")
    return site.replace("/var/log/nginx/", log_dir + "/")


def render_main(folder: str, site_path: str, log_dir: str, shutdown_timeout: str) -> str:
    with open(os.path.join(DEPLOY, "nginx", "nginx.conf"), encoding="utf-8") as handle:
        main = handle.read()
    main = _replace_once(main, "pid /run/nginx.pid;", f"pid {folder}/nginx.pid;")
    main = _replace_once(main, "include /etc/nginx/conf.d/sentri.conf;", f"include {site_path};")
    main = _replace_once(main, "worker_shutdown_timeout 30s;", f"worker_shutdown_timeout {shutdown_timeout};")
    main = main.replace("/var/lib/nginx/", folder + "/temp-")
    return main.replace("/var/log/nginx/", log_dir + "/")


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"deploy file changed: expected exactly one {old!r}"
    return text.replace(old, new)


class Nginx:
    """The real nginx binary as a foreground child (``daemon off``) with a private prefix."""

    def __init__(self, folder: str, upstream_ports: List[int], log_dir: str, shutdown_timeout: str = "1s") -> None:
        self.folder = folder
        self.upstream_ports = upstream_ports
        self.log_dir = log_dir
        self.conf = os.path.join(folder, "nginx.conf")
        self.site_path = os.path.join(folder, "sentri.conf")
        self._listen_on(free_port())
        with open(self.conf, "w", encoding="utf-8") as handle:
            handle.write(render_main(folder, self.site_path, log_dir, shutdown_timeout))
        self.process: Optional[subprocess.Popen] = None  # type: ignore[type-arg]

    def _listen_on(self, port: int) -> None:
        self.port = port
        with open(self.site_path, "w", encoding="utf-8") as handle:
            handle.write(render_site(port, self.upstream_ports, self.log_dir))

    def command(self, *extra: str) -> List[str]:
        return [NGINX, "-p", self.folder, "-c", self.conf, *extra]

    def test_config(self) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        return subprocess.run(self.command("-t"), capture_output=True, text=True)

    def start(self) -> Nginx:
        for attempt in range(PORT_ATTEMPTS):
            with open(os.path.join(self.log_dir, f"nginx-{self.port}.stderr"), "ab") as stderr:
                self.process = subprocess.Popen(self.command("-g", "daemon off;"), stderr=stderr)
            try:
                wait_for_port(self.port, process=self.process)
                return self
            except RuntimeError:  # exited at once: its port was taken since free_port chose it
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                self._listen_on(free_port())
        return self  # pragma: no cover - the loop returns or raises

    def reload(self) -> None:
        subprocess.run(self.command("-s", "reload"), check=True, capture_output=True)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        self.process = None


class Instance:
    """One ``sentri serve`` subprocess, JSON logs to a stderr file in the session log folder."""

    def __init__(self, env: Dict[str, str], log_dir: str, open_files: Optional[int] = None) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "PORT": str(self.port)}
        self.open_files = open_files  # the process's RLIMIT_NOFILE (``ulimit -n``); None: inherited
        self.stderr_path = os.path.join(log_dir, f"sentri-serve-{self.port}.stderr")
        self.process: Optional[subprocess.Popen] = None  # type: ignore[type-arg]

    def start(self, timeout_s: float = 10.0) -> Instance:
        # A first start may move to another port (free_port's choice can be taken meanwhile, by
        # the other test env CI runs beside this one); a restart keeps its port: nginx knows it.
        attempts = PORT_ATTEMPTS if self.process is None else 1
        for attempt in range(attempts):
            with open(self.stderr_path, "ab") as stderr:
                self.process = subprocess.Popen([sys.executable, "-m", "sentri.cli", "serve"], env=self.env,
                                                stderr=stderr, stdout=subprocess.DEVNULL,
                                                preexec_fn=self._limit_open_files)
            try:
                wait_for_port(self.port, timeout_s=timeout_s, process=self.process)
                return self
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                self.port = free_port()
                self.env["PORT"] = str(self.port)
        return self  # pragma: no cover - the loop returns or raises

    def _limit_open_files(self) -> None:
        if self.open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def log_lines(self) -> List[str]:
        with open(self.stderr_path, encoding="utf-8") as handle:
            return handle.read().splitlines()

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
