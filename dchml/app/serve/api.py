"""The web API and page over a SearchService (FastAPI on Starlette; served by uvicorn).

Routes (docs/serve.md has the details):
  GET  /                          the search page (static files of this package)
  GET  /api/health, /api/info     liveness; the model, data, databases, capabilities, limits
  GET  /api/items/random          a random query (or database) item
  GET  /api/items/{id}            one item; /api/items/{id}/image its image (a re-encoded JPEG)
  POST /api/search/caption|item|features (JSON), /api/search/image (multipart upload)
  GET  /openapi.json              the OpenAPI description

Encoding and ranking run in worker threads, at most one per core at a time, so the event loop
keeps answering. Every error is JSON (errors.error_body), never a traceback.
"""
from __future__ import annotations

import logging
import os
from importlib import resources
from typing import Literal, Optional

import anyio
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from . import limits
from .errors import ServeError, error_body
from .gate import RequestGate

log = logging.getLogger("dchml.serve")
Modality = Literal["image", "text"]
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: Optional[Modality] = Field(None, description="database to rank (default: image when there is one)")
    k: int = Field(limits.DEFAULT_K, ge=1, le=limits.MAX_K, description="results wanted")


class CaptionSearch(_Request):
    text: str = Field(min_length=1, max_length=limits.MAX_CAPTION_CHARS, description="the caption")


class ItemSearch(_Request):
    item: int = Field(ge=0, description="id of a data set item (its data row)")
    modality: Optional[Modality] = Field(None, description="which of the item's modalities is the query "
                                                           "(default: image when the model has it)")


class FeatureSearch(_Request):
    modality: Modality = Field(description="the network the vector is fed to")
    vector: list[float] = Field(min_length=1, max_length=limits.MAX_VECTOR_LENGTH,
                                description="one input row of that network (image features or bag-of-words)")


class Item(BaseModel):
    id: int
    labels: list[int]
    caption: Optional[str]
    image_url: Optional[str]
    split: str
    trained_on: bool


class Hit(BaseModel):
    rank: int
    distance: int
    relevant: Optional[bool] = Field(description="shares a label with the query (item queries only)")
    item: Item


class SearchResult(BaseModel):
    query: dict
    target: str
    k: int
    database_size: int
    results: list[Hit]
    warnings: list[str]
    timing_ms: dict


class ErrorBody(BaseModel):
    status: int
    error: str
    message: str


ERRORS = {code: {"model": ErrorBody} for code in (400, 404, 413, 415, 422)}


def _static_files() -> dict:
    folder = resources.files(__package__).joinpath("static")
    return {entry.name: (entry.read_bytes(), STATIC_TYPES[os.path.splitext(entry.name)[1]])
            for entry in folder.iterdir() if os.path.splitext(entry.name)[1] in STATIC_TYPES}


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        where = next(e for e in errors if e.get("type") == "json_invalid")
        return 400, f"the body is not valid JSON ({(where.get('ctx') or {}).get('error', 'decode error')})"
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "; ".join(parts) + more


def create_app(service, *, allowed_hosts=None, workers: int | None = None) -> FastAPI:
    """The ASGI app over `service`. allowed_hosts: Host names answered (None: any); workers:
    searches computed at once (default: the CPU count)."""
    app = FastAPI(title="dchml serve", version="1", docs_url=None, redoc_url=None,
                  description="Hamming-space retrieval over a trained dchml model (docs/serve.md).")
    import torch

    static = _static_files()
    limiter = anyio.CapacityLimiter(workers or max(1, os.cpu_count() or 1))
    threads = torch.get_num_threads()

    def in_worker(fn, args):
        # OpenMP's thread count is per thread: a worker thread would otherwise run the ranker's
        # OpenMP loops with every core, whatever --threads says (measured: a 1M-code search took
        # 24 ms instead of 1.2 ms on a busy 2-core machine).
        torch.set_num_threads(threads)
        return fn(*args)

    async def compute(fn, *args):
        return await anyio.to_thread.run_sync(in_worker, fn, args, limiter=limiter)

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError):
        return JSONResponse(error_body(exc.status, exc.message), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        status, message = _validation_message(exc)
        return JSONResponse(error_body(status, message), status_code=status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such page or endpoint: {request.url.path[:200]}"
        elif exc.status_code == 400 and request.url.path == "/api/search/image":
            message = f"the body is not a valid multipart/form-data upload ({message.rstrip('.')})"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path[:200]}"
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "internal error; the server logged it and goes on answering"),
                            status_code=500)

    @app.get("/", include_in_schema=False)
    async def page():
        body, kind = static["index.html"]
        return Response(body, media_type=kind, headers={"cache-control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str):
        if name not in static or name == "index.html":
            raise ServeError(404, f"no static file {name[:80]!r}")
        body, kind = static[name]
        return Response(body, media_type=kind, headers={"cache-control": "no-cache"})

    @app.get("/api/health", summary="Liveness")
    async def health():
        return {"status": "ok", "databases": {m: len(db) for m, db in service.databases.items()}}

    @app.get("/api/info", summary="The model, data, databases, what can be searched with, and the limits")
    async def info():
        return service.info()

    @app.get("/api/items/random", response_model=Item, summary="A random item of the query (or database) split")
    async def random_item(split: Literal["query", "database"] = Query("query"),
                          seed: Optional[int] = Query(None, ge=0, lt=2 ** 63)):
        return service.random_item(split, seed)

    @app.get("/api/items/{item_id}", response_model=Item, responses=ERRORS, summary="One item")
    async def item(item_id: str):
        return service.item(item_id)

    @app.get("/api/items/{item_id}/image", responses={**ERRORS, 200: {"content": {"image/jpeg": {}}}},
             response_class=Response, summary="An item's image, re-encoded as a JPEG thumbnail")
    async def item_image(item_id: str):
        data = await compute(service.thumbnail, item_id)
        return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=600"})

    @app.post("/api/search/caption", response_model=SearchResult, responses=ERRORS, summary="Search with a caption")
    async def search_caption(query: CaptionSearch):
        return await compute(service.search_caption, query.text, query.target, query.k)

    @app.post("/api/search/item", response_model=SearchResult, responses=ERRORS,
              summary="Search with an item of the data set (results say which share a label with it)")
    async def search_item(query: ItemSearch):
        return await compute(service.search_item, query.item, query.modality, query.target, query.k)

    @app.post("/api/search/features", response_model=SearchResult, responses=ERRORS,
              summary="Search with a feature vector (an input row of the image or text network)")
    async def search_features(query: FeatureSearch):
        return await compute(service.search_vector, query.modality, query.vector, query.target, query.k)

    @app.post("/api/search/image", response_model=SearchResult, responses=ERRORS, summary="Search with an image file")
    async def search_image(file: UploadFile = File(description="JPEG, PNG, GIF, BMP, WebP, TIFF or PPM"),
                           target: Optional[Modality] = Form(None),
                           k: int = Form(limits.DEFAULT_K, ge=1, le=limits.MAX_K)):
        upload = await file.read(limits.MAX_UPLOAD_BYTES + 1)
        return await compute(service.search_image, upload, target, k, file.filename)

    app.add_middleware(RequestGate, allowed_hosts=allowed_hosts)
    return app
