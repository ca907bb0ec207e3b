"""The `dchml serve` command: bind the address (a port in use is a one-line error before any
loading), load the checkpoint and its data, encode the databases, then run uvicorn on the bound
socket until Ctrl-C."""
from __future__ import annotations

import ipaddress
import os
import socket
import sys

from ..arguments import UsageError

# (importable names, the package that provides them); python-multipart was `multipart` before 0.0.13
REQUIRED = ((("fastapi",), "fastapi"), (("uvicorn",), "uvicorn"), (("python_multipart", "multipart"), "python-multipart"))


def _require_web_stack() -> None:
    from importlib.util import find_spec

    missing = [package for modules, package in REQUIRED if not any(find_spec(m) for m in modules)]
    if missing:
        raise UsageError(f"dchml serve needs {', '.join(missing)}: pip install 'dchml[serve]' "
                         "(or run scripts/setup_env.sh)")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or UsageError naming why not (address in use, ...)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def run(args, argv) -> None:
    _require_web_stack()
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file")
    sock = listen(args.host, args.port)
    try:
        app, _, summary = build(args)
        serve_forever(app, sock, summary, args)
    finally:
        sock.close()


def build(args):
    """(ASGI app, its SearchService, a one-line summary) for the parsed arguments."""
    from ..model_commands import checkpoint_model_and_data
    from .api import create_app
    from .service import SearchService, run_metrics

    state, model, device, data, _ = checkpoint_model_and_data(args)
    metrics = run_metrics(args.checkpoint)
    about = {"method": metrics.get("method") or (state.get("config") or {}).get("method"),
             "checkpoint": os.path.basename(os.path.dirname(os.path.abspath(args.checkpoint))) + "/"
                           + os.path.basename(args.checkpoint),
             "epoch": state.get("epoch"), "metrics": metrics}
    service = SearchService(model, data, encoders=(state.get("data") or {}).get("encoders"), device=device,
                            about=about, log=lambda message: print(f"dchml serve: {message}", file=sys.stderr,
                                                                    flush=True))
    allowed = ("127.0.0.1", "localhost", "::1") if is_loopback(args.host) else None
    app = create_app(service, allowed_hosts=allowed)
    databases = ", ".join(f"{m} {len(db):,}" for m, db in service.databases.items())
    summary = f"{about['method'] or 'model'} {service.bits} bits on {data.name}; databases: {databases}"
    return app, service, summary


def serve_forever(app, sock: socket.socket, summary: str, args) -> None:
    import uvicorn

    if not is_loopback(args.host):
        print(f"dchml serve: warning: listening on {args.host}, not loopback: anyone who can reach this machine "
              "can query the model (there is no authentication)", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=args.access_log, server_header=False,
                            timeout_keep_alive=5, limit_concurrency=1024, lifespan="off")
    print(f"dchml serve: {summary}; open {url_of(sock)} (Ctrl-C stops)", file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])
