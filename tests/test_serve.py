"""`dchml serve`: the JSON API through an ASGI test client (searches against the ranker and the
CLI's own search, items, thumbnails, capabilities, every error status), a model on pixels, the
command itself, and a soak of hostile requests against a real uvicorn server."""
import http.client
import io
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="dchml serve needs the serve extras: pip install 'dchml[serve]'")
pytest.importorskip("uvicorn", reason="dchml serve needs the serve extras: pip install 'dchml[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

import dchml  # noqa: E402
from dchml.app.cli import main  # noqa: E402
from dchml.app.serve import limits  # noqa: E402
from image_data import make_textlist  # noqa: E402
from serve_fixtures import RunningServer, app_for, feature_run, free_port, image_run, set_threads  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK = "http://127.0.0.1:8000"  # the server answers loopback Host names only


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    set_threads()
    root = tmp_path_factory.getbasetemp() / "serve-runs"
    return {"feature": feature_run(root), "image": image_run(root)}


@pytest.fixture(scope="module")
def feature(runs):
    app, service = app_for(runs["feature"])
    return TestClient(app, base_url=LOOPBACK, raise_server_exceptions=False), service


@pytest.fixture(scope="module")
def image(runs):
    app, service = app_for(runs["image"])
    return TestClient(app, base_url=LOOPBACK, raise_server_exceptions=False), service


def _png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, with one tiny compressed row: decoding it
    would need width x height x 3 bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _ranked(results):
    return [(hit["item"]["id"], hit["distance"]) for hit in results["results"]]


def test_info_shows_the_model_the_run_map_and_what_can_be_searched(feature, image):
    client, service = feature
    info = client.get("/api/info").json()
    assert info["model"]["bits"] == 16 and info["model"]["modalities"] == ["image", "text"]
    metrics = info["model"]["metrics"]
    assert {"i2t_map", "t2i_map", "topk"} <= set(metrics) and 0 < metrics["i2t_map"] <= 1
    assert info["databases"] == {"image": 240, "text": 240} and info["data"]["items"] == 300
    caps = info["capabilities"]
    assert not caps["caption"]["available"] and "vocabulary" in caps["caption"]["reason"]
    assert not caps["image_upload"]["available"] and "ready-made image features" in caps["image_upload"]["reason"]
    assert caps["vector"] == {"image": 24, "text": 40} and info["limits"]["max_k"] == limits.MAX_K
    assert client.get("/api/health").json() == {"status": "ok", "databases": {"image": 240, "text": 240}}
    caps = image[0].get("/api/info").json()["capabilities"]
    assert caps["caption"]["available"] and caps["image_upload"]["available"]
    assert image[0].get("/api/info").json()["data"]["has_images"]


def test_item_search_is_the_cli_search(feature, runs, tmp_path):
    client, service = feature
    out = tmp_path / "cli.json"
    assert main(["search", "--checkpoint", str(runs["feature"]["checkpoint"]), "--data", str(runs["feature"]["data"]),
                 "--query-modality", "image", "--queries", "4", "-k", "15", "--out", str(out)]) == 0
    cli = json.loads(out.read_text())["results"][0]
    api = client.post("/api/search/item", json={"item": cli["row"], "modality": "image", "target": "text",
                                                "k": 15}).json()
    assert _ranked(api) == [(r["row"], r["distance"]) for r in cli["results"]]
    assert [hit["relevant"] for hit in api["results"]] == [r["relevant"] for r in cli["results"]]
    assert api["query"]["item"]["split"] == "query" and api["database_size"] == 240


def test_a_feature_vector_searches_like_the_item_it_is(feature, runs):
    from dchml.data import load_dataset

    client, service = feature
    row = int(service.catalog.query_rows[7])
    vector = load_dataset(str(runs["feature"]["data"])).text[row].tolist()
    by_vector = client.post("/api/search/features", json={"modality": "text", "vector": vector, "k": 9}).json()
    by_item = client.post("/api/search/item", json={"item": row, "modality": "text", "k": 9}).json()
    assert _ranked(by_vector) == _ranked(by_item) and by_vector["target"] == "image"
    assert all(hit["relevant"] is None for hit in by_vector["results"])


def test_caption_search_reads_through_the_vocabulary_and_ranks_with_the_index(image, runs):
    client, service = image
    result = client.post("/api/search/caption", json={"text": "A DOG!", "k": 8}).json()
    model = dchml.method.checkpoint.model_from_checkpoint(str(runs["image"]["checkpoint"]))
    state = dchml.method.checkpoint.load_checkpoint(str(runs["image"]["checkpoint"]))
    vocabulary = dchml.data.vocab.Vocabulary.from_state(state["data"]["encoders"]["text"])
    query = dchml.encode(model, vocabulary.transform(["a dog"]), "text")
    index = dchml.HammingIndex(model.bits).add(dchml.encode(model, _features(runs)[service.catalog.database_rows],
                                                            "image"))
    dist, pos = index.search(query, 8)
    assert _ranked(result) == list(zip(service.catalog.database_rows[pos[0]].tolist(), dist[0].tolist()))
    dog = 1  # image_data.WORDS: label 1 is "dog, 東京"
    assert sum(dog in hit["item"]["labels"] for hit in result["results"][:5]) >= 4  # a trained model finds dogs
    assert result["results"][0]["item"]["image_url"] == f"/api/items/{result['results'][0]['item']['id']}/image"
    unknown = client.post("/api/search/caption", json={"text": "zebra", "k": 3}).json()
    assert "vocabulary" in unknown["warnings"][0] and len(unknown["results"]) == 3


def _features(runs):
    return torch.from_numpy(np.load(runs["image"]["data"] / "features.npy"))


def test_an_uploaded_photo_finds_itself_in_any_format(image, runs):
    from PIL import Image

    client, service = image
    row = int(service.catalog.database_rows[5])
    path = runs["image"]["data"] / "img" / f"{row}.jpg"
    jpeg = path.read_bytes()
    result = client.post("/api/search/image", files={"file": ("photo.jpg", jpeg, "image/jpeg")},
                         data={"k": "10", "target": "image"}).json()
    assert (row, 0) in _ranked(result) and result["query"]["kind"] == "image"
    png = io.BytesIO()
    Image.open(path).save(png, "PNG")
    again = client.post("/api/search/image", files={"file": ("photo.png", png.getvalue(), "image/png")},
                        data={"k": "10"}).json()
    assert row in [item for item, _ in _ranked(again)]
    captions = client.post("/api/search/image", files={"file": ("p.jpg", jpeg, "image/jpeg")},
                           data={"target": "text", "k": "4"}).json()
    assert captions["target"] == "text" and all(hit["item"]["caption"] for hit in captions["results"])


def test_items_and_their_thumbnails(image, feature):
    client, service = image
    item = client.get("/api/items/3").json()
    assert item["id"] == 3 and item["caption"] and item["labels"] and item["split"] in ("query", "database")
    thumb = client.get("/api/items/3/image")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:2] == b"\xff\xd8" and thumb.headers["x-content-type-options"] == "nosniff"
    assert client.get("/api/items/random?split=query&seed=3").json()["split"] == "query"
    missing = feature[0].get("/api/items/3/image")
    assert missing.status_code == 404 and "image features, not image files" in missing.json()["message"]


def test_models_without_a_vocabulary_or_backbone_say_why(feature):
    client, _ = feature
    r = client.post("/api/search/caption", json={"text": "a dog"})
    assert r.status_code == 422 and "no vocabulary" in r.json()["message"]
    r = client.post("/api/search/image", files={"file": ("a.png", _png(8, 8), "image/png")})
    assert r.status_code == 422 and "cannot read image files" in r.json()["message"]


def test_the_openapi_description_and_the_page(image):
    client, _ = image
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/search/caption", "/api/search/image", "/api/search/item", "/api/search/features",
                 "/api/items/{item_id}", "/api/items/{item_id}/image", "/api/info", "/api/health"):
        assert path in paths
    page = client.get("/")
    assert page.status_code == 200 and 'id="caption"' in page.text and 'id="image-file"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")


# (method, path, body, content type, expected status, words of the message)
HOSTILE = [
    ("POST", "/api/search/caption", b'{"text": "dog", ', "application/json", 400, "not valid JSON"),
    ("POST", "/api/search/caption", b"\xff\xfe\x00garbage", "application/json", 400, "not valid JSON"),
    ("POST", "/api/search/caption", b'{"text": "dog"}', "text/plain", 415, "takes application/json"),
    ("POST", "/api/search/caption", b'{"text": "dog"}', None, 415, "takes application/json"),
    ("POST", "/api/search/caption", b'["dog"]', "application/json", 422, "dictionary"),
    ("POST", "/api/search/caption", b'{"text": ""}', "application/json", 422, "text"),
    ("POST", "/api/search/caption", b'{"text": "   "}', "application/json", 422, "empty"),
    ("POST", "/api/search/caption", json.dumps({"text": "a" * 2001}).encode(), "application/json", 422, "2000"),
    ("POST", "/api/search/caption", b'{"text": "dog", "k": 0}', "application/json", 422, "k"),
    ("POST", "/api/search/caption", b'{"text": "dog", "k": 101}', "application/json", 422, "100"),
    ("POST", "/api/search/caption", b'{"text": "dog", "k": "all"}', "application/json", 422, "k"),
    ("POST", "/api/search/caption", b'{"text": "dog", "target": "audio"}', "application/json", 422, "target"),
    ("POST", "/api/search/caption", b'{"text": "dog", "sql": 1}', "application/json", 422, "sql"),
    ("POST", "/api/search/caption", b'{"text": "' + b"a" * (limits.MAX_JSON_BYTES + 10) + b'"}', "application/json",
     413, "at most"),
    ("POST", "/api/search/item", b'{"item": 48}', "application/json", 404, "no item 48"),
    ("POST", "/api/search/item", b'{"item": 10000000000000}', "application/json", 404, "no item"),
    ("POST", "/api/search/item", b'{"item": -1}', "application/json", 422, "item"),
    ("POST", "/api/search/item", b'{"item": "../../etc/passwd"}', "application/json", 422, "item"),
    ("POST", "/api/search/item", b'{"item": 3, "modality": "smell"}', "application/json", 422, "modality"),
    ("POST", "/api/search/features", b'{"modality": "text", "vector": [1, 2]}', "application/json", 422,
     "length 8"),
    ("POST", "/api/search/features", b'{"modality": "text", "vector": [NaN, 0, 0, 0, 0, 0, 0, 0]}',
     "application/json", 422, "NaN"),
    ("POST", "/api/search/features", b'{"modality": "text", "vector": ["x"]}', "application/json", 422, "vector"),
    ("POST", "/api/search/features", b'{"modality": "text", "vector": [1e39, 0, 0, 0, 0, 0, 0, 0]}',
     "application/json", 422, "float32"),
    ("POST", "/api/search/image", b"not multipart", "multipart/form-data; boundary=zz", 400, "not a valid multipart"),
    ("POST", "/api/search/image", b'{"file": "x"}', "application/json", 415, "multipart/form-data"),
    ("GET", "/api/items/48", None, None, 404, "no item"),
    ("GET", "/api/items/..%2F..%2Fetc%2Fpasswd", None, None, 404, "no such"),
    ("GET", "/api/items/%2e%2e", None, None, 404, "no item"),
    ("GET", "/api/items/1e3", None, None, 404, "no item"),
    ("GET", "/api/items/%C2%B2", None, None, 404, "no item"),  # a Unicode digit is not an id
    ("GET", "/api/items/-1/image", None, None, 404, "no item"),
    ("GET", "/static/..%2Fserve%2Fapi.py", None, None, 404, "no such"),
    ("GET", "/static/api.py", None, None, 404, "no static file"),
    ("GET", "/api/items/random?split=train", None, None, 422, "split"),
    ("DELETE", "/api/info", None, None, 405, "not allowed"),
    ("GET", "/etc/passwd", None, None, 404, "no such"),
]


def _upload(name, data, kind="image/jpeg"):
    boundary = "dchmltestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: {kind}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return ("POST", "/api/search/image", body, f"multipart/form-data; boundary={boundary}")


HOSTILE_UPLOADS = [
    (_upload("huge.png", _png(50_000, 50_000)), 413, "pixels"),
    (_upload("wide.png", _png(40_001, 1_000)), 413, "at most 40,000,000"),
    (_upload("big.jpg", b"\xff\xd8" + b"\0" * (limits.MAX_UPLOAD_BYTES + 1)), 413, "at most"),
    (_upload("notes.txt", b"hello, I am text", "text/plain"), 415, "not an image"),
    (_upload("page.jpg", b"<html><script>alert(1)</script></html>"), 415, "not an image"),
    (_upload("empty.jpg", b""), 422, "empty"),
    (_upload("cut.png", _png(64, 64)[:40]), 415, "not an image"),
]


def _check_error(status, body, expected, words):
    assert status == expected, (status, body)
    payload = json.loads(body)
    assert payload["status"] == expected and words.lower() in payload["message"].lower(), payload
    assert "Traceback" not in body.decode("utf-8", "replace")


@pytest.mark.parametrize("method,path,body,kind,expected,words", HOSTILE)
def test_hostile_requests_get_the_right_status_and_a_clear_json_message(image, method, path, body, kind, expected,
                                                                       words):
    client, _ = image
    headers = {} if kind is None else {"content-type": kind}
    r = client.request(method, path, content=body, headers=headers)
    _check_error(r.status_code, r.content, expected, words)


def test_hostile_uploads_are_refused_before_decoding(image):
    client, _ = image
    for (method, path, body, kind), expected, words in HOSTILE_UPLOADS:
        r = client.request(method, path, content=body, headers={"content-type": kind})
        _check_error(r.status_code, r.content, expected, words)


def test_other_host_names_are_refused(image):
    app = image[0].app
    r = TestClient(app, base_url="http://attacker.example").get("/api/health")
    assert r.status_code == 400 and "answers only" in r.json()["message"]


def test_an_unexpected_failure_is_a_json_500_and_the_next_request_is_answered(image, monkeypatch):
    client, service = image

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "search_item", broken)
    r = client.post("/api/search/item", json={"item": 1})
    assert r.status_code == 500 and r.json()["message"].startswith("internal error") and "boom" not in r.text
    monkeypatch.undo()
    assert client.post("/api/search/item", json={"item": 1}).status_code == 200


def test_a_model_on_pixels_encodes_uploads_and_items_itself(tmp_path):
    """A model with an image backbone: database images are read from the listed files, uploads go
    to the backbone as pixels, thumbnails come from the files."""
    from dchml.app.serve.api import create_app
    from dchml.app.serve.service import SearchService
    from dchml.data import load_dataset
    from dchml.method.models import CrossModalHashModel

    folder = make_textlist(tmp_path / "pix", n=12, size=64, seed=2)
    data = load_dataset(str(folder), image_size=64, image_workers=0, n_query=2, n_train=6)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CrossModalHashModel(16, data.n_labels, data.text_dim, None, image_size=64, image_hidden=32,
                                    text_hidden=32, proxy_hidden=16).eval()
    service = SearchService(model, data, encoders=data.encoders)
    client = TestClient(create_app(service), raise_server_exceptions=False)
    assert client.get("/api/info").json()["capabilities"]["image_upload"] == {"available": True, "reason": None}
    row = int(data.retrieval_idx[2])
    upload = client.post("/api/search/image", files={"file": ("x.jpg", (folder / "img" / f"{row}.jpg").read_bytes(),
                                                              "image/jpeg")}, data={"k": "10"}).json()
    assert (row, 0) in _ranked(upload)
    by_item = client.post("/api/search/item", json={"item": row, "modality": "image", "k": 10}).json()
    assert (row, 0) in _ranked(by_item) and by_item["results"][0]["relevant"] in (True, False)
    assert client.get(f"/api/items/{row}/image").content[:2] == b"\xff\xd8"
    (folder / "img" / "0.jpg").write_bytes(b"truncated")
    service.catalog.thumbnail.cache_clear()
    r = client.get("/api/items/0/image")
    assert r.status_code == 404 and "not an image" in r.json()["message"]


@pytest.mark.parametrize("argv,needle", [
    (["serve", "--checkpoint", "{tmp}/none.pt"], "no such file"),
    (["serve", "--checkpoint", "{ckpt}", "--port", "70000"], "0..65535"),
    (["serve", "--checkpoint", "{ckpt}", "--port", "{busy}"], "cannot listen"),
    (["serve", "--checkpoint", "{tmp}/bad.pt", "--port", "0"], "not a dchml checkpoint"),
])
def test_command_errors_are_one_line_exit_2(argv, needle, runs, tmp_path, capsys):
    import socket

    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        subst = {"{tmp}": str(tmp_path), "{ckpt}": str(runs["feature"]["checkpoint"]),
                 "{busy}": str(busy.getsockname()[1])}
        args = []
        for a in argv:
            for key, value in subst.items():
                a = a.replace(key, value)
            args.append(a)
        code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and ": error: " in err[0] and needle in err[0], err


def test_the_command_serves_until_interrupted(runs):
    """`dchml serve` as a user starts it: binds loopback, prints where to open it, answers, and
    stops on Ctrl-C."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "dchml", "serve", "--checkpoint", str(runs["feature"]["checkpoint"]),
                             "--port", str(port), "--threads", "1"], stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr] + [lines.put(None)], daemon=True).start()
    try:
        seen = []
        while not seen or (seen[-1] is not None and "open http" not in seen[-1]):
            seen.append(lines.get(timeout=120))  # start-up: import torch, load, encode
        assert seen[-1] is not None and f"open http://127.0.0.1:{port}/" in seen[-1], seen
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/health")
        assert json.loads(conn.getresponse().read())["status"] == "ok"
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    rest = []
    while (line := lines.get(timeout=10)) is not None:
        rest.append(line)
    assert proc.returncode == 130 and "Traceback" not in "".join(rest), rest
    assert rest[-1].strip() == "dchml serve: interrupted", rest


def test_soak_hostile_requests_between_good_ones_on_a_real_server(image, runs):
    """Bad requests (oversized, wrong types, malformed JSON, unknown and path-like ids) from four
    clients at once, between good searches; the good answers never change and the server is
    still answering at the end."""
    client, service = image
    server = RunningServer(client.app)
    good = json.dumps({"text": "sky", "k": 10}).encode()
    reference = _ranked(client.post("/api/search/caption", content=good,
                                    headers={"content-type": "application/json"}).json())
    bad = [(m, p, b, k, e, w) for m, p, b, k, e, w in HOSTILE] + [(*req, e, w) for req, e, w in HOSTILE_UPLOADS]
    raw_paths = [("GET", "/static/../../../../etc/passwd", None, None, 404, "no such"),
                 ("GET", "/api/items/1/image/../../../../../etc/passwd", None, None, 404, "no such")]
    failures = []

    def call(method, path, body=None, kind=None, host="127.0.0.1"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host)
            if kind:
                conn.putheader("Content-Type", kind)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            if body is not None:
                try:
                    conn.send(body)
                except OSError:
                    pass  # the server may answer 413 and close before the whole body is sent
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def worker(offset):
        try:
            for i, (method, path, body, kind, expected, words) in enumerate(bad[offset::4] + raw_paths):
                _check_error(*call(method, path, body, kind), expected, words)
                if i % 3 == 0:
                    status, answer = call("POST", "/api/search/caption", good, "application/json")
                    assert status == 200 and _ranked(json.loads(answer)) == reference
            _check_error(*call("GET", "/api/health", host="evil.example:80"), 400, "answers only")
        except Exception as exc:  # noqa: BLE001  (reported by the main thread)
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures[0]
        status, answer = call("POST", "/api/search/caption", good, "application/json")
        assert status == 200 and _ranked(json.loads(answer)) == reference
        assert json.loads(call("GET", "/api/health")[1])["status"] == "ok"
        assert server.thread.is_alive()
    finally:
        server.stop()


def test_pixel_arrays_without_files_are_shown_from_the_pixels_and_listed_files_only_when_they_line_up(tmp_path):
    from dchml.app.serve.catalog import Catalog, listed_image_files
    from dchml.data import from_arrays, load_dataset

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 3, 16, 16), dtype=np.uint8)
    data = from_arrays(pixels, rng.random((6, 5)), np.eye(3)[[0, 1, 2, 0, 1, 2]], query_idx=[0, 1],
                       retrieval_idx=[2, 3, 4, 5], train_idx=[2, 3], name="pixels")
    catalog = Catalog(data)
    assert catalog.has_images and catalog.files is None and not catalog.has_captions
    assert catalog.thumbnail(4)[:2] == b"\xff\xd8"
    folder = make_textlist(tmp_path / "set", n=10, size=16)
    (folder / "labels.txt").write_text("\n".join(["1 0 0 0", "0 1 0 0"] * 4 + ["0 0 1 0", "0 0 0 0"]) + "\n")
    # (the last item has no label)
    np.save(folder / "features.npy", rng.random((10, 4)).astype(np.float32))
    kept = load_dataset(str(folder), drop_unlabeled=True, n_query=2, n_train=4)
    assert kept.n == 9 and listed_image_files(kept) is None  # images.txt no longer lines up with the rows
    (folder / "labels.txt").write_text("\n".join(["1 0 0 0", "0 1 0 0"] * 5) + "\n")
    files = listed_image_files(load_dataset(str(folder), n_query=2, n_train=4))
    assert files == [str(folder / "img" / f"{i}.jpg") for i in range(10)]
