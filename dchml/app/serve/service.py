"""`SearchService`: a trained model, the data set's catalog, and one Hamming index per modality
the model and the data both have, built once; every search ranks with dchml's HammingIndex.

The service is plain synchronous Python (the API runs it in worker threads, off the event loop):
the same object answers the web API, the tests and the benchmark.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import torch

from ...method.encoding import encode
from ...retrieval.index import HammingIndex
from . import limits
from .catalog import Catalog
from .errors import ServeError
from .queries import QueryEncoder


@dataclass
class Database:
    """One modality's searchable items: the ranker's index and the data row at each position."""

    index: HammingIndex
    rows: torch.Tensor  # int64 (len(index),)

    @classmethod
    def from_codes(cls, bits: int, codes, rows) -> "Database":
        rows = torch.as_tensor(rows, dtype=torch.int64)
        index = HammingIndex(bits).add(codes)
        if index.ntotal != rows.numel():
            raise ValueError(f"{index.ntotal} codes but {rows.numel()} rows")
        return cls(index, rows)

    def __len__(self) -> int:
        return self.index.ntotal


def run_metrics(checkpoint_path: str) -> dict:
    """The MAP scores of the run a checkpoint belongs to: every `*_map` number of the metrics.json
    beside it (i2t, t2i, i2i, t2t: whichever the run has), with its `topk`, method and date;
    {} when there is none or it cannot be read (the page then shows no score)."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), "metrics.json")
    try:
        if os.path.getsize(path) > (64 << 20):
            return {}
        with open(path, encoding="utf-8") as fh:
            metrics = json.load(fh)
    except (OSError, ValueError):
        return {}
    if not isinstance(metrics, dict):
        return {}
    out = {k: float(v) for k, v in metrics.items()
           if k.endswith("_map") and isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key in ("topk", "method", "date"):
        if isinstance(metrics.get(key), (int, str)):
            out[key] = metrics[key]
    return out


class SearchService:
    """model: a trained dchml model (eval mode) on `device`; data: the data set it searches;
    encoders: the checkpoint's record of how raw inputs became rows; about: what the page's header
    shows (method, checkpoint, metrics); databases: prebuilt {modality: Database} (benchmarks),
    else the data set's database split encoded now."""

    def __init__(self, model, data, *, encoders: dict | None = None, device="cpu", about: dict | None = None,
                 databases: dict | None = None, log=None):
        self.model, self.device = model, torch.device(device)
        self.bits = int(model.bits)
        self.catalog = Catalog(data)
        self.queries = QueryEncoder(model, data, encoders, self.device)
        self.about = dict(about or {})
        if databases is None:
            databases = {}
            for modality in self.queries.capabilities()["item"]:
                started = time.perf_counter()
                databases[modality] = self.encode_database(data, modality)
                if log:
                    log(f"encoded the {modality} database: {len(databases[modality]):,} items in "
                        f"{time.perf_counter() - started:.1f} s")
        self.databases = dict(databases)
        if not self.databases:
            raise ValueError("nothing to search: the model and the data share no modality")

    def encode_database(self, data, modality: str) -> Database:
        rows = data.retrieval_idx
        codes = encode(self.model, getattr(data, modality)[rows], modality, device=self.device)
        return Database.from_codes(self.bits, codes, rows)

    # ------------------------------------------------------------------------------ describe
    def info(self) -> dict:
        catalog = self.catalog
        return {"model": {**self.about, "bits": self.bits, "modalities": list(self.queries.modalities)},
                "data": {"name": catalog.name, "items": catalog.n, "queries": int(catalog.query_rows.numel()),
                         "labels": int(catalog.labels.shape[1]), "has_images": catalog.has_images,
                         "has_captions": catalog.has_captions},
                "databases": {m: len(db) for m, db in self.databases.items()},
                "capabilities": self.queries.capabilities(),
                "limits": limits.as_dict()}

    def item(self, item) -> dict:
        return self.catalog.item(self.catalog.row(item))

    def random_item(self, split: str, seed: int | None = None) -> dict:
        rows = self.catalog.query_rows if split == "query" else self.catalog.database_rows
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        pick = int(torch.randint(rows.numel(), (1,), generator=generator))
        return self.catalog.item(int(rows[pick]))

    def thumbnail(self, item) -> bytes:
        return self.catalog.thumbnail(self.catalog.row(item))

    # -------------------------------------------------------------------------------- search
    def _plan(self, target: str | None, k) -> tuple[str, Database, int]:
        """The database to rank and the number of results, checked before any encoding."""
        if target is None:
            target = "image" if "image" in self.databases else next(iter(self.databases))
        if target not in self.databases:
            raise ServeError(422, f"there is no {target} database to search (this server has: "
                                  f"{', '.join(self.databases)})")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limits.MAX_K:
            raise ServeError(422, f"k must be an integer in 1..{limits.MAX_K}, got {k!r}")
        database = self.databases[target]
        return target, database, min(k, len(database))

    def _rank(self, code, query: dict, plan: tuple, started: float, query_row=None, warnings=()) -> dict:
        target, database, k = plan
        encoded = time.perf_counter()
        distances, positions = database.index.search(code, k)
        rows = database.rows[torch.as_tensor(positions)[0]]
        relevant = None if query_row is None else self.catalog.shares_label(rows, query_row)
        results = [{"rank": i + 1, "distance": int(d), "relevant": None if relevant is None else relevant[i],
                    "item": self.catalog.item(int(r))}
                   for i, (d, r) in enumerate(zip(torch.as_tensor(distances)[0].tolist(), rows.tolist()))]
        done = time.perf_counter()
        return {"query": query, "target": target, "k": k, "database_size": len(database), "results": results,
                "warnings": list(warnings),
                "timing_ms": {"encode": round((encoded - started) * 1e3, 3), "rank": round((done - encoded) * 1e3, 3)}}

    def search_caption(self, text: str, target=None, k: int = limits.DEFAULT_K) -> dict:
        started, plan = time.perf_counter(), self._plan(target, k)
        code, warnings = self.queries.caption(text)
        return self._rank(code, {"kind": "caption", "modality": "text", "caption": text}, plan, started,
                          warnings=warnings)

    def search_image(self, upload: bytes, target=None, k: int = limits.DEFAULT_K, filename: str | None = None) -> dict:
        started, plan = time.perf_counter(), self._plan(target, k)
        code = self.queries.image(upload)
        query = {"kind": "image", "modality": "image", "filename": (filename or "")[:200], "bytes": len(upload)}
        return self._rank(code, query, plan, started)

    def search_vector(self, modality: str, vector: list, target=None, k: int = limits.DEFAULT_K) -> dict:
        started, plan = time.perf_counter(), self._plan(target, k)
        code = self.queries.vector(modality, vector)
        return self._rank(code, {"kind": "vector", "modality": modality, "length": len(vector)}, plan, started)

    def search_item(self, item, modality: str | None = None, target=None, k: int = limits.DEFAULT_K) -> dict:
        started, plan = time.perf_counter(), self._plan(target, k)
        row = self.catalog.row(item)
        if modality is None:
            modality = "image" if "image" in self.queries.modalities else self.queries.modalities[0]
        code = self.queries.item(modality, row)
        query = {"kind": "item", "modality": modality, "item": self.catalog.item(row)}
        return self._rank(code, query, plan, started, query_row=row)
