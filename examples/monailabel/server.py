"""Serve the Inf-Net bundle from a MONAI Label server.

MONAI Label lives in its own virtual environment (see ``README.md`` here); this module only
drives that environment's interpreter, so it runs from any Python (the test suite uses it)::

    python examples/monailabel/server.py --studies /data/ct            # lay out the app, serve
    python examples/monailabel/server.py --studies /data/ct --port 8000 --app-dir ./monailabel-app

:func:`prepare_app` lays out an app folder (this folder's ``app/``, or MONAI Label's
``monaibundle`` sample app) with the bundle under its ``model/`` folder; :func:`server_command`
is ``monailabel start_server`` with the bundle, the local zoo and SAM 2 off (the sample app's
SAM 2 models would download weights); :func:`start_server`/:func:`wait_until_ready`/
:func:`stop_server` run it as a process group with bounded waits; :func:`http` is a small
JSON/multipart client for its REST API.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Mapping, Sequence

__all__ = [
    "BUNDLE_NAME",
    "DEFAULT_BUNDLE",
    "DEFAULT_PYTHON",
    "monailabel_python",
    "prepare_app",
    "server_command",
    "free_port",
    "start_server",
    "wait_until_ready",
    "stop_server",
    "http",
    "main",
]

BUNDLE_NAME = "covid19_lung_infection_ct_segmentation"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO_ROOT / "bundles" / BUNDLE_NAME
DEFAULT_PYTHON = REPO_ROOT / ".venv-label" / "bin" / "python"
PYTHON_ENV_VAR = "INFNET_MONAILABEL_PYTHON"
SAMPLE_APP = "monaibundle"
APP_SOURCE = Path(__file__).resolve().parent / "app"


def monailabel_python(python: str | os.PathLike | None = None) -> Path:
    """The MONAI Label environment's interpreter: ``python``, else ``$INFNET_MONAILABEL_PYTHON``,
    else ``.venv-label/bin/python`` in the repository. Raises ``FileNotFoundError`` if missing."""
    path = Path(python or os.environ.get(PYTHON_ENV_VAR) or DEFAULT_PYTHON)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no MONAI Label interpreter; build the environment with .ci/monailabel.sh "
            f"(or set {PYTHON_ENV_VAR} to the python of an environment with monailabel installed)"
        )
    return path


def prepare_app(
    app_dir: str | os.PathLike, bundle: str | os.PathLike = DEFAULT_BUNDLE, link_bundle: bool = True,
    sample_app_python: str | os.PathLike | None = None, timeout: float = 120.0,
) -> Path:
    """A MONAI Label app folder at ``app_dir`` (which must not exist) with ``bundle`` as
    ``app_dir/model/<bundle name>``: a symlink when ``link_bundle`` (retraining then updates that
    bundle's ``models/model.pt``), otherwise a copy.

    The app is this folder's ``app/`` (auto-segmentation and retraining on CT volumes), or, given
    ``sample_app_python`` (the MONAI Label interpreter), MONAI Label's own ``monaibundle`` sample
    app as ``monailabel apps --download`` copies it from the installed package (no network).
    """
    app_dir, bundle = Path(app_dir).absolute(), Path(bundle).absolute()
    if app_dir.exists():
        raise FileExistsError(f"{app_dir}: already exists; pass a new --app-dir or remove it")
    if not (bundle / "configs" / "inference.json").is_file():
        raise FileNotFoundError(f"{bundle}: not a bundle (no configs/inference.json); pass the bundle folder")
    staging = app_dir.parent / f".{app_dir.name}.{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        if sample_app_python is None:
            shutil.copytree(APP_SOURCE, staging / "app", ignore=shutil.ignore_patterns("__pycache__"))
            source = staging / "app"
        else:
            subprocess.run(
                [str(sample_app_python), "-m", "monailabel.main", "apps", "--download", "--name", SAMPLE_APP,
                 "--output", str(staging)],
                check=True, capture_output=True, text=True, timeout=timeout,
            )
            source = staging / SAMPLE_APP
        (source / "model").mkdir()
        target = source / "model" / bundle.name
        if link_bundle:
            target.symlink_to(bundle, target_is_directory=True)
        else:
            shutil.copytree(bundle, target)
        source.rename(app_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return app_dir


def server_command(
    python: str | os.PathLike, app_dir: str | os.PathLike, studies: str | os.PathLike,
    host: str = "127.0.0.1", port: int = 8000, bundle_name: str = BUNDLE_NAME,
    conf: Mapping[str, str] | None = None,
) -> list[str]:
    """``monailabel start_server`` for an app serving ``bundle_name`` from ``app_dir/model``.

    ``zoo_source local``: bundles come from ``model/``, nothing is downloaded; ``sam2 false``: the
    sample app's SAM 2 models would download their weights. ``conf`` adds ``--conf`` pairs.
    """
    pairs = {"models": bundle_name, "zoo_source": "local", "sam2": "false", **(conf or {})}
    cmd = [
        str(python), "-m", "monailabel.main", "start_server", "--app", str(app_dir), "--studies", str(studies),
        "--host", host, "--port", str(port),
    ]
    for key, value in pairs.items():
        cmd += ["--conf", key, str(value)]
    return cmd


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_server(
    cmd: Sequence[str], log_path: str | os.PathLike, env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (so :func:`stop_server` ends its training
    subprocesses too), stdout and stderr into ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, start_new_session=True,
        )


def _log_tail(log_path: str | os.PathLike | None, lines: int = 40) -> str:
    if not log_path or not Path(log_path).is_file():
        return ""
    return "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-lines:])


def wait_until_ready(
    url: str, process: subprocess.Popen, timeout: float = 120.0, log_path: str | os.PathLike | None = None,
) -> dict:
    """Poll ``GET {url}/info/`` until the server answers; returns the info JSON. Raises
    ``RuntimeError`` (with the log's tail) if the process exits or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"MONAI Label server exited with code {process.returncode}:\n{_log_tail(log_path)}")
        try:
            return http(f"{url}/info/", timeout=5.0)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"MONAI Label server not ready at {url} after {timeout:.0f} s:\n{_log_tail(log_path)}")


def stop_server(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the server's process group, SIGKILL it after ``timeout`` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the group may still hold children (a training run) after the server itself exited
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def _multipart(fields: Mapping[str, str], files: Mapping[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """``multipart/form-data`` body and content type for text ``fields`` and (name, bytes) ``files``."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def http(
    url: str, method: str = "GET", json_body: object | None = None, fields: Mapping[str, str] | None = None,
    files: Mapping[str, tuple[str, bytes]] | None = None, timeout: float = 60.0, raw: bool = False,
) -> object:
    """One request to the server: a JSON body, or form ``fields`` plus ``files`` (multipart).
    Returns the decoded JSON answer, or the bytes with ``raw``. Raises ``RuntimeError`` with the
    server's message on an HTTP error."""
    data, headers = None, {}
    if json_body is not None:
        data, headers["Content-Type"] = json.dumps(json_body).encode(), "application/json"
    elif fields or files:
        data, headers["Content-Type"] = _multipart(fields or {}, files or {})
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {url}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:2000]}") from exc
    return body if raw else json.loads(body or b"null")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the Inf-Net bundle with MONAI Label's monaibundle app.")
    parser.add_argument("--studies", required=True, help="folder of CT volumes (NIfTI) or a DICOMweb URL")
    parser.add_argument("--app-dir", default="monailabel-app", help="app folder, created on first use")
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle folder (linked into the app)")
    parser.add_argument(
        "--python", default=None, help=f"MONAI Label interpreter (default ${PYTHON_ENV_VAR} or {DEFAULT_PYTHON})"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--sample-app", action="store_true",
                        help="lay out MONAI Label's monaibundle sample app instead (auto-segmentation only)")
    args = parser.parse_args(argv)
    try:
        python = monailabel_python(args.python)
        app_dir = Path(args.app_dir)
        if not app_dir.exists():
            prepare_app(app_dir, args.bundle, sample_app_python=python if args.sample_app else None)
            print(f"app prepared in {app_dir}")
    except (FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    studies = args.studies if args.studies.startswith(("http://", "https://")) else Path(args.studies).absolute()
    cmd = server_command(python, app_dir.absolute(), studies, args.host, args.port, bundle_name=Path(args.bundle).name)
    print(" ".join(cmd))
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
