"""`dchml eval`, `encode`, `search` and `features`: the commands that use a trained checkpoint
(or a pretrained backbone) on data."""
from __future__ import annotations

import os
import shlex
import sys

import numpy as np

from .arguments import UsageError, check_output_file, load_data, log_for


def _load_model(args):
    """(checkpoint dict, model on --device, device)."""
    from ..method.checkpoint import load_checkpoint, model_from_checkpoint
    from ..method.config import resolve_device

    device = resolve_device(args.device)
    state = load_checkpoint(args.checkpoint)
    return state, model_from_checkpoint(state).to(device), device


def _checkpoint_data(args, state):
    """--data, or the data the checkpoint was trained on; split seed --seed or the training seed."""
    recorded = state["data"].get("source")
    if args.data is None and recorded is None:
        raise UsageError(f"checkpoint {args.checkpoint} does not record where its data came from (it was "
                         "trained on data built in memory); pass --data")
    seed = args.seed
    if seed is None:
        seed = recorded["seed"] if recorded is not None else int(state["config"]["seed"])
    return load_data(args, seed, recorded, state["model_spec"].get("image_size", 224)), seed


def _split_words(source: dict | None, seed) -> str:
    """How a data set's query/database split was made, in words."""
    kind = (source or {}).get("split")
    if kind == "file":
        return "the file's own query/database/training split"
    if kind == "file, training drawn from the seed":
        return f"the file's own query/database split, training items drawn with seed {seed}"
    if kind == "protocol":
        return f"protocol {source.get('protocol')} drawn with seed {seed}"
    return f"dchml's split drawn with seed {seed}"


def _eval_command(args, saved: dict, trained_seed) -> str:
    """The command that evaluates the checkpoint on the split it was trained with."""
    source = saved.get("source") or {}
    parts = ["dchml eval --checkpoint", shlex.quote(args.checkpoint)]
    if source.get("format") == "synthetic":
        parts += ["--data synthetic"]
    elif source.get("path"):
        parts += ["--data", shlex.quote(source.get("abspath") or source["path"])]
    parts += ["--seed", str(trained_seed)]
    if source.get("protocol"):
        parts += ["--protocol", source["protocol"]]
    return " ".join(parts)


def _refuse_trained_queries(args, state, data, rows, seed, what):
    """Queries that are training items of the checkpoint inflate every score: refuse them, naming
    the two splits and the command that scores the model on the one it was trained with."""
    from ..data.fingerprint import data_fingerprint, trained_items

    if "fingerprint" not in state["data"]:
        return  # written before data fingerprints existed: the overlap cannot be known
    count = trained_items(state["data"], data, rows)
    if not count:
        return
    saved = state["data"]
    trained_seed = (saved.get("source") or {}).get("seed", state["config"]["seed"])
    trained_on = f"{saved.get('name')!r} with {_split_words(saved.get('source'), trained_seed)}"
    same_file = saved["fingerprint"]["content"] == data_fingerprint(data)["content"]
    here = f"{data.name} ({_split_words(data.source, seed)})"
    why = ("the same items split differently" if same_file
           else "this file holds items of its training data (matched by content)")
    raise UsageError(f"{count} of the {len(rows)} {what} of {here} are items the checkpoint was trained on "
                     f"({trained_on}): {why}, which would inflate the scores; evaluate on the split it was trained "
                     f"with: {_eval_command(args, saved, trained_seed)}")


def _checkpoint_model_and_data(args):
    """eval and search: --out checked, the checkpoint's model and the data it is scored on."""
    if args.out:
        check_output_file(args.out, args.force)
    return checkpoint_model_and_data(args)


def checkpoint_model_and_data(args):
    """(checkpoint dict, model on --device, device, data, split seed) for --checkpoint and --data
    (default: the data it was trained on), the model checked to fit the data (eval, search, serve)."""
    state, model, device = _load_model(args)
    data, seed = _checkpoint_data(args, state)
    _check_model_fits_data(model, data)
    return state, model, device, data, seed


def cmd_eval(args, argv):
    from ..data.fingerprint import data_fingerprint
    from ..io.atomic import write_json
    from ..method.evaluate import evaluate

    state, model, device, data, seed = _checkpoint_model_and_data(args)
    _refuse_trained_queries(args, state, data, data.query_idx, seed, "queries")
    from ..method.methods import TASK_NAMES

    topk = args.topk or int(state["config"].get("topk", 5000))
    scores = evaluate(model, data, topk=topk, curves=bool(args.out), device=device)
    print(f"MAP@{topk} " + "  ".join(f"{name} {scores[f'{task}_map']:.4f}" for task, name in TASK_NAMES.items()
                                          if f"{task}_map" in scores))
    if args.out:
        write_json({"bits": model.bits, **scores, "checkpoint": args.checkpoint, "data": data.name, "seed": seed,
                    "data_fingerprint": data_fingerprint(data)}, args.out)


def _check_model_fits_data(model, data):
    spec = model.spec()
    problems = []
    if spec["n_labels"] != data.n_labels:
        problems.append(f"{data.n_labels} labels (model: {spec['n_labels']})")
    missing = [m for m in model.modalities if getattr(data, m, None) is None]
    if missing:
        problems.append(f"no {' and no '.join(missing)} (the model encodes {' and '.join(model.modalities)})")
    if "text" in model.modalities and "text" not in missing and spec["text_dim"] != data.text_dim:
        problems.append(f"{data.text_dim}-d text (model: {spec['text_dim']})")
    if "image" in model.modalities and "image" not in missing and (
            (spec["image_dim"] is None) != bool(data.image_is_pixels)
            or (spec["image_dim"] is not None and spec["image_dim"] != data.image_dim)):
        problems.append(f"image {'pixels' if data.image_is_pixels else data.image_dim} "
                        f"(model: {'pixels' if spec['image_dim'] is None else spec['image_dim']})")
    if problems:
        raise UsageError(f"the checkpoint does not fit --data {data.name}: it has " + ", ".join(problems))


def _check_modality(model, modality, flag):
    if modality not in model.modalities:
        raise UsageError(f"{flag} {modality}: this checkpoint encodes {' and '.join(model.modalities)} only")


def _load_npy(path, what):
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path}: no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UsageError(f"{what} {path} is not a readable .npy file ({type(exc).__name__})") from None
    if not isinstance(array, np.ndarray):
        raise UsageError(f"{what} {path} holds several arrays (.npz); give one .npy array")
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.number):
        raise UsageError(f"{what} {path} has dtype {array.dtype}; expected numbers")
    if array.ndim == 1 or (array.ndim == 3):
        array = array[None]  # one item
    return array


def _as_model_input(array, model, modality, what):
    import torch

    spec = model.spec()
    if modality == "image" and spec["image_dim"] is None:
        if array.ndim != 4 or array.shape[1] != 3 or array.dtype != np.uint8:
            raise UsageError(f"{what}: the model takes uint8 images (n, 3, H, W), got {array.dtype} {array.shape}")
        return torch.from_numpy(np.ascontiguousarray(array))
    dim = spec["image_dim"] if modality == "image" else spec["text_dim"]
    if array.ndim != 2 or array.shape[1] != dim:
        raise UsageError(f"{what}: the model's {modality} net takes (n, {dim}) arrays, got shape {array.shape}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise UsageError(f"{what} holds NaN or infinite values")
    return torch.from_numpy(array)


def cmd_encode(args, argv):
    from ..method.encoding import encode
    from ..io.atomic import write_atomic

    check_output_file(args.out, args.force)
    state, model, device = _load_model(args)
    _check_modality(model, args.modality, "--modality")
    if args.input.lower().endswith(".txt"):
        batch = _raw_input(args, model, state.get("data", {}).get("encoders") or {}, device)
    else:
        batch = _as_model_input(_load_npy(args.input, "--input"), model, args.modality, f"--input {args.input}")
    codes = encode(model, batch, args.modality, device=device).numpy()
    write_atomic(args.out, lambda f: np.save(f, codes))
    print(f"wrote {codes.shape[0]} {model.bits}-bit {args.modality} codes, packed uint8 {codes.shape}, to {args.out}")


def _raw_input(args, model, encoders, device):
    from . import raw_inputs

    if not os.path.isfile(args.input):
        raise UsageError(f"--input {args.input}: no such file")
    if args.modality == "text":
        return raw_inputs.text_rows(encoders, args.input, device=device,
                                    log=log_for(args))
    return raw_inputs.image_rows(encoders, model.spec(), args.input, device=device, workers=args.workers)


def cmd_features(args, argv):
    from ..method.features import extract_features

    check_output_file(args.out, args.force)
    if args.image_weights not in (None, "random") and not os.path.isfile(args.image_weights):
        raise UsageError(f"--image-weights {args.image_weights}: no such file")
    data = load_data(args, args.seed, image_size=args.image_size)
    if not data.image_is_pixels:
        raise UsageError(f"--data {args.data} " + ("has no images" if data.image is None else
                                                   f"holds {data.image_dim}-d image features already")
                         + "; `dchml features` needs image files or pixels")
    partial = args.out + ".partial"
    try:
        summary = extract_features(data, args.out, image_backbone=args.image_backbone, image_weights=args.image_weights,
                                   text_backbone=args.text_backbone, text_weights=args.text_weights,
                                   device=args.device, batch_size=args.batch_size, chunk_rows=args.chunk_rows,
                                   precision=args.precision, image_size=args.image_size, progress=not args.quiet,
                                   log=None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True)))
    except KeyboardInterrupt:
        print(f"dchml features: interrupted; the finished chunks are kept in {partial}: run the same command again "
              "to continue", file=sys.stderr)
        raise SystemExit(130) from None
    skipped = len(summary["encoders"]["image"]["skipped"])
    text = "no text" if summary["text_dim"] is None else f"{summary['text_dim']}-d text"
    print(f"wrote {summary['n']} items ({summary['image_dim']}-d {args.image_backbone} image features, "
          f"{text}) to {args.out}" + (f"; {skipped} unreadable images skipped" if skipped else ""))


def cmd_search(args, argv):
    import torch

    from .. import HammingIndex
    from ..method.encoding import encode

    state, model, device, data, seed = _checkpoint_model_and_data(args)
    _check_modality(model, args.query_modality, "--query-modality")
    db_modality = args.database_modality
    if db_modality is None:  # across modalities for a cross-modal model, within its modality otherwise
        db_modality = args.query_modality if not model.cross_modal else (
            "text" if args.query_modality == "image" else "image")
    _check_modality(model, db_modality, "--database-modality")
    db_source = data.text if db_modality == "text" else data.image
    if args.queries is not None:
        try:
            positions = [int(p) for p in args.queries.split(",") if p.strip()]
        except ValueError:
            raise UsageError(f"--queries must be comma-separated integers, got {args.queries!r}") from None
        n_query = data.query_idx.numel()
        bad = [p for p in positions if not 0 <= p < n_query]
        if bad or not positions:
            raise UsageError(f"--queries must be positions in 0..{n_query - 1} of the query split, got {args.queries!r}")
        rows = data.query_idx[positions]
        _refuse_trained_queries(args, state, data, rows, seed, "queries asked for")
        source = data.image if args.query_modality == "image" else data.text
        queries = source[rows]
    else:
        # Items the user brings: one modality cannot identify an item (tag vectors repeat), so
        # they are not compared with the training items.
        positions = rows = None
        queries = _as_model_input(_load_npy(args.input, "--input"), model, args.query_modality, f"--input {args.input}")
    index = HammingIndex(model.bits)
    index.add(encode(model, db_source[data.retrieval_idx], db_modality, device=device))
    k = min(args.k, data.retrieval_idx.numel())
    if k < args.k:
        print(f"dchml search: warning: -k {args.k} is more than the {k} items of the database; "
              f"showing {k} per query", file=sys.stderr, flush=True)
    distances, positions_db = index.search(encode(model, queries, args.query_modality, device=device), k)
    distances, positions_db = torch.as_tensor(distances), torch.as_tensor(positions_db)
    results = []
    for qi in range(distances.shape[0]):
        item_rows = data.retrieval_idx[positions_db[qi]]
        # "query": the position asked for (--queries) or the --input row; "row": its data row
        entry = {"query": qi if positions is None else positions[qi],
                 "results": [{"row": int(r), "distance": int(dist)} for r, dist in zip(item_rows, distances[qi])]}
        if rows is not None:
            entry["row"] = int(rows[qi])
            shared = (data.labels[item_rows] @ data.labels[rows[qi]]) > 0
            for res, rel in zip(entry["results"], shared.tolist()):
                res["relevant"] = bool(rel)
        results.append(entry)
    if args.out:
        from ..io.atomic import write_json

        write_json({"query_modality": args.query_modality, "database_modality": db_modality, "k": k,
                    "results": results}, args.out)
        print(f"wrote {len(results)} result lists to {args.out}")
        return
    for entry in results:
        items = "  ".join(f"{r['row']}(d={r['distance']}{'' if 'relevant' not in r else ', rel' if r['relevant'] else ''})"
                          for r in entry["results"])
        where = f"query {entry['query']}" if rows is None else f"query position {entry['query']} (row {entry['row']})"
        print(f"{args.query_modality} {where} -> {db_modality} rows: {items}")
