"""`dchml serve` under load: many concurrent clients sending caption searches to a real uvicorn
server on loopback for a fixed time; requests per second, latency percentiles and errors.

Cases:
  builtin  the built-in synthetic set (12,000 items, 10,000 in the database) with each item's
           bag-of-words written out as a caption of word tokens, so the server reads captions
           through a vocabulary as it would for a data set of sentences;
  1m       the same model and captions, the image database replaced by 1,000,000 random 64-bit
           codes (the point is the ranking cost; each position shows a real item's metadata).

The model is trained briefly on that set (3 epochs: latency does not depend on how good the codes
are) unless --checkpoint and --data are given. The server runs in its own process (this script
with --child), the load generator here: one asyncio task per client, each a keep-alive HTTP/1.1
connection sending one request at a time (closed loop). Both share the machine's cores: the
numbers are for server and clients on one machine.

Results go to --out DIR (default: a new folder ./bench_out/bench_serve-<time>/): serve.md and
serve_cpu.csv (benchmarks/harness.py's schema). --record writes them (the rows appended) to
benchmarks/results/serve_cpu.csv and writes benchmarks/results/serve.md.

  python benchmarks/bench_serve.py --duration 20 --clients 64 [--record]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (ROOT, Provenance, add_output_options, append_rows, atomic_write, cpu_name,  # noqa: E402
                     output_folder)

sys.path.insert(0, ROOT)
CASES = {"builtin": None, "1m": 1_000_000}


# ---------------------------------------------------------------------------------- the data set
def prepare(out: Path, epochs: int) -> tuple[Path, Path]:
    """A text-list copy of the built-in set whose text is captions; a briefly trained model."""
    import numpy as np

    folder, run = out / "captioned_synthetic", out / "run"
    if not (folder / "captions.txt").is_file():
        from dchml.data import make_synthetic

        data = make_synthetic(seed=0)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "features.npy", data.image.numpy())
        np.savetxt(folder / "labels.txt", data.labels.numpy(), fmt="%d")
        words = [" ".join(f"w{j:04d}" for j in np.flatnonzero(row)) for row in data.text.numpy()]
        (folder / "captions.txt").write_text("\n".join(words) + "\n")
        for name, idx in (("query_idx.txt", data.query_idx), ("database_idx.txt", data.retrieval_idx),
                          ("train_idx.txt", data.train_idx)):
            np.savetxt(folder / name, idx.numpy() + 1, fmt="%d")
    if not (run / "checkpoint.pt").is_file():
        subprocess.run([sys.executable, "-m", "dchml", "train", "--data", str(folder), "--bits", "64", "--epochs",
                        str(epochs), "--threads", "1", "--quiet", "--force", "--out", str(run)], check=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    return run / "checkpoint.pt", folder


def query_captions(folder: Path, n: int = 500) -> list[str]:
    lines = (folder / "captions.txt").read_text().splitlines()
    rows = [int(x) - 1 for x in (folder / "query_idx.txt").read_text().split()][:n]
    return [lines[r] for r in rows]


# ---------------------------------------------------------------------------------- the server
def child(args) -> None:
    """Serve --checkpoint/--data on --port, optionally with a random --database-size database."""
    import numpy as np
    import torch
    import uvicorn

    from dchml.app.arguments import build_parser
    from dchml.app.serve.api import create_app
    from dchml.app.serve.command import build, listen
    from dchml.app.serve.service import Database

    torch.set_num_threads(args.threads)
    sock = listen("127.0.0.1", args.port)
    parsed = build_parser().parse_args(["serve", "--checkpoint", args.checkpoint, "--data", args.data,
                                        "--threads", str(args.threads)])
    _, service, _ = build(parsed)
    if args.database_size:
        rows = service.catalog.database_rows
        codes = np.random.default_rng(0).integers(0, 256, (args.database_size, service.bits // 8), dtype=np.uint8)
        service.databases["image"] = Database.from_codes(service.bits, torch.from_numpy(codes),
                                                         rows.repeat(args.database_size // len(rows) + 1)
                                                         [:args.database_size])
    app = create_app(service, allowed_hosts=("127.0.0.1",))
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False, lifespan="off",
                            timeout_keep_alive=30, limit_concurrency=4096, backlog=4096)
    uvicorn.Server(config).run(sockets=[sock])


def start_server(args, checkpoint, data, database_size):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--port", str(port), "--checkpoint", str(checkpoint),
           "--data", str(data), "--threads", str(args.threads)]
    if database_size:
        cmd += ["--database-size", str(database_size)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(args.threads)))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if b" 200 " in c.recv(4096):
                    return proc, port
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start in 600 s")


# ---------------------------------------------------------------------------- the load generator
async def _request(reader, writer, body: bytes) -> tuple[int, bytes]:
    writer.write(b"POST /api/search/caption HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


async def load(port: int, captions: list[str], clients: int, warmup: float, duration: float, k: int) -> dict:
    latencies, errors, statuses = [], 0, {}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def client(seed: int):
        nonlocal errors
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                body = json.dumps({"text": rng.choice(captions), "k": k}).encode()
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    status, answer = await _request(reader, writer, body)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    status, answer = -1, b""
                t1 = time.perf_counter()
                if t0 < measure_from:
                    continue
                statuses[status] = statuses.get(status, 0) + 1
                if status != 200 or len(json.loads(answer)["results"]) != k:
                    errors += 1
                    if status == -1:
                        writer.close()
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                latencies.append(t1 - t0)
        finally:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3  # noqa: E731
    done = len(latencies)
    return {"requests": done + errors, "ok": done, "errors": errors, "statuses": statuses,
            "req_per_s": done / duration, "p50_ms": pick(0.50), "p90_ms": pick(0.90), "p99_ms": pick(0.99),
            "max_ms": latencies[-1] * 1e3, "mean_ms": statistics.fmean(latencies) * 1e3}


def server_timing(port: int, caption: str) -> dict:
    """The server's own encode / rank times for one caption (medians of 20 requests sent one at a
    time), and the size of the database it ranks."""
    encode, rank, size = [], [], None
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port)) as c:
            body = json.dumps({"text": caption, "k": 20}).encode()
            c.sendall(b"POST /api/search/caption HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            data = b""
            while chunk := c.recv(65536):
                data += chunk
        answer = json.loads(data.split(b"\r\n\r\n", 1)[1])
        timing, size = answer["timing_ms"], answer["database_size"]
        encode.append(timing["encode"])
        rank.append(timing["rank"])
    return {"encode_ms": statistics.median(encode), "rank_ms": statistics.median(rank), "database": size}


# ------------------------------------------------------------------------------------ reporting
def write_results(out: Path, rows: list[dict], results: dict, args, provenance: Provenance) -> None:
    lines = ["# `dchml serve` under load: caption search on loopback", "",
             provenance.markdown_header(), "",
             f"Settings: {args.clients} concurrent clients (closed loop, keep-alive HTTP/1.1, asyncio in one process "
             f"on the same machine), {args.warmup:g} s warm-up then {args.duration:g} s measured per case, k = "
             f"{args.k}, server: one uvicorn process, {args.threads} torch thread(s) per search, at most one search "
             "per core at a time.", "",
             "| case | database codes | requests | errors | req/s | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | "
             "one client: p50 (ms) | server's encode / rank (ms) | load average before / after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case, r in results.items():
        lines.append(f"| {case} | {r['database']:,} | {r['requests']:,} | {r['errors']} | {r['req_per_s']:.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
                     f"{r['single_p50_ms']:.1f} | {r['encode_ms']:.2f} / {r['rank_ms']:.2f} | "
                     f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |")
    lines += ["", f"With {args.clients} clients each waiting for its answer, the server is saturated and a request "
              "mostly waits in line: p50 is close to clients / throughput. \"One client\" is the round trip with "
              "nothing else in flight; the last column is the server's own median time to encode the caption and to "
              "rank the database (`timing_ms` of the answer). Errors: any answer other than 200 with k results, or a "
              "broken connection. The load average (1 minute, the whole machine) says how busy the 2 cores "
              "were with other work: the measured server shares them with the clients and with it."]
    text = "\n".join(lines) + "\n"
    atomic_write(os.path.join(out, "serve.md"), text)
    append_rows(os.path.join(out, "serve_cpu.csv"), rows)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="builtin,1m", help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per case (default 20)")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first (default 3)")
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    ap.add_argument("-k", type=int, default=20, help="results per search (default 20)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per search in the server (default 1)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the benchmark's model (default 3)")
    ap.add_argument("--checkpoint", help="serve this checkpoint instead (with --data: a data set with captions)")
    ap.add_argument("--data")
    add_output_options(ap)
    ap.add_argument("--note", default="", help="free text stored with every row (e.g. the machine's load)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--database-size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    out = output_folder(args, "bench_serve")
    # The prepared model and data never go into the tracked results folder.
    work = Path(output_folder(argparse.Namespace(out=None, record=False), "bench_serve") if args.record
                else out).resolve()
    if args.checkpoint:
        checkpoint, data = Path(args.checkpoint), Path(args.data)
    else:
        checkpoint, data = prepare(work, args.epochs)
    captions = query_captions(data) if (data / "query_idx.txt").is_file() else ["a photo"]
    provenance = Provenance(f"{cpu_name()}, CPU only", note=args.note)
    rows, results = [], {}
    for case in cases:
        load_before = os.getloadavg()[0]  # other jobs on the machine: recorded with every number
        proc, port = start_server(args, checkpoint, data, CASES[case])
        try:
            timing = server_timing(port, captions[0])
            single = asyncio.run(load(port, captions, 1, 1.0, min(5.0, args.duration), args.k))
            timing["single_p50_ms"] = single["p50_ms"]
            r = asyncio.run(load(port, captions, args.clients, args.warmup, args.duration, args.k))
        finally:
            proc.terminate()
            proc.wait(30)
        database = timing.pop("database")
        results[case] = {**r, **timing, "database": database, "load": (load_before, os.getloadavg()[0])}
        print(f"{case}: {r['req_per_s']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
              f"{r['errors']} errors of {r['requests']}", file=sys.stderr)
        label = f"caption search, {database} codes, {args.clients} clients, k={args.k}"
        for metric, value in (("req_per_s", r["req_per_s"]), ("p50_ms", r["p50_ms"]), ("p90_ms", r["p90_ms"]),
                              ("p99_ms", r["p99_ms"]), ("max_ms", r["max_ms"]), ("errors", r["errors"]),
                              ("requests", r["requests"]), ("one_client_p50_ms", timing["single_p50_ms"]),
                              ("server_encode_ms", timing["encode_ms"]),
                              ("server_rank_ms", timing["rank_ms"])):
            rows.append(provenance.row("serve", label, "dchml serve (uvicorn, 1 process)", metric, value,
                                       note=f"1-min load average {load_before:.1f} before the case"))
    write_results(out, rows, results, args, provenance)


if __name__ == "__main__":
    main()
