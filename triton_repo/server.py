"""``fashiongen serve``: run the ``tritonserver`` binary that the nvidia-pytriton wheel bundles.

Set-up done by code: the binary, backends and caches are copied out of the
wheel once into a cache folder with the python-backend stub for this Python; ``LD_LIBRARY_PATH`` gets the
wheel's libraries and this Python's ``lib/``; ``PATH`` starts with this environment's ``bin/`` so the
stub's embedded Python imports numpy, onnxruntime and this project from here.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fashiongen.runtime.errors import InputError
from fashiongen.runtime.files import replace_folder

CACHE = Path(os.environ.get("FASHIONGEN_TRITON_HOME", Path(sys.prefix) / "fashiongen-tritonserver"))


class ServeError(InputError):
    """The server cannot start (port taken, broken model, missing wheel); the message says which."""


def _wheel_root() -> Path:
    try:
        import pytriton
    except ImportError:
        raise ServeError("nvidia-pytriton is not installed (pip install -e '.[serve]')") from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServeError(f"{root}: the nvidia-pytriton wheel carries no tritonserver binary")
    return root


def install_server(home: Path = CACHE) -> Path:
    """Copy the bundled server and the python-backend stub for this Python into ``home`` (once)."""
    binary = home / "bin" / "tritonserver"
    stub = home / "backends" / "python" / "triton_python_backend_stub"
    if binary.is_file() and stub.is_file():
        return home
    root = _wheel_root()
    staging = home.with_name(home.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    for part in ("bin", "backends", "caches"):
        shutil.copytree(root / part, staging / part, symlinks=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    source_stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not source_stub.is_file():
        raise ServeError(f"nvidia-pytriton has no python-backend stub for Python {version}")
    shutil.copy2(source_stub, staging / "backends" / "python" / "triton_python_backend_stub")
    replace_folder(staging, home)
    return home


def server_environment() -> dict[str, str]:
    import pytriton

    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(libs), sysconfig.get_config_var("LIBDIR"), env.get("LD_LIBRARY_PATH")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    return env


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ServerOptions:
    repo: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    startup_timeout: float = 120.0
    log: Path | None = None  # server output; default: a file in the repository's parent


class TritonServer:
    """A running tritonserver process; a context manager that stops it on exit."""

    def __init__(self, options: ServerOptions):
        self.options = options
        self.process: subprocess.Popen | None = None
        self.log_path = options.log or Path(options.repo).absolute().parent / f".tritonserver-{options.http_port}.log"

    @property
    def http_url(self) -> str:
        return f"{self.options.host}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.options.host}:{self.options.grpc_port}"

    def command(self, home: Path) -> list[str]:
        o = self.options
        return [str(home / "bin" / "tritonserver"), f"--model-repository={Path(o.repo).absolute()}",
                f"--backend-directory={home / 'backends'}", f"--cache-directory={home / 'caches'}",
                "--model-control-mode=explicit", "--load-model=*", "--exit-on-error=true",
                "--strict-readiness=true", "--allow-gpu-metrics=false",
                f"--http-address={o.host}", f"--http-port={o.http_port}",
                f"--grpc-address={o.host}", f"--grpc-port={o.grpc_port}",
                f"--metrics-address={o.host}", f"--metrics-port={o.metrics_port}"]

    def start(self) -> "TritonServer":
        o = self.options
        if not (Path(o.repo) / "fashiongen_repo.json").is_file():
            raise ServeError(f"--repo: '{o.repo}' is not a model repository written by `fashiongen triton-repo`")
        for flag, port in (("--http-port", o.http_port), ("--grpc-port", o.grpc_port),
                           ("--metrics-port", o.metrics_port)):
            if not port_is_free(o.host, port):
                raise ServeError(f"{flag}: port {port} on {o.host} is already in use")
        home = install_server()
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command(home), stdout=log, stderr=subprocess.STDOUT,
                                        env=server_environment(), start_new_session=True)
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.startup_timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServeError(f"tritonserver exited during start-up (status {self.process.returncode}): "
                                 f"{self.failure_reason()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        self.stop()
        raise ServeError(f"tritonserver not ready after {self.options.startup_timeout:.0f} s; see {self.log_path}")

    def failure_reason(self) -> str:
        """The server's own words for a failed start: its first error line about a model."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        for line in text.splitlines():
            if "failed to load" in line or ("E" == line[:1] and "error" in line.lower()):
                return line.strip()[:500]
        return f"see {self.log_path}"

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever(options: ServerOptions) -> int:
    """Start, report, and stop cleanly on Ctrl-C / SIGTERM."""
    server = TritonServer(options).start()
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True
    # Handlers before "ready" is announced: a supervisor may signal as soon as it reads that line.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"tritonserver ready: http {server.http_url}, grpc {server.grpc_url} (log: {server.log_path})", flush=True)
    try:
        while not stopping and server.process.poll() is None:
            time.sleep(0.2)
    finally:
        server.stop()
    if not stopping:
        print(f"tritonserver exited with status {server.process.returncode}; see {server.log_path}", file=sys.stderr)
        return 1
    print("tritonserver stopped", flush=True)
    return 0
