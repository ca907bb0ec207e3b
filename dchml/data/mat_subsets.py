"""Single-modality MATLAB files that store the training and test sets (and sometimes the
database) as separate arrays, the way the public files of SDH, KSH and their successors do
(`traindata`, `traingnd`, `testdata`, `testgnd`). Names are matched case-insensitively, first
match wins:

  training features : traindata, train_data, Xtrain, X_train, trainX, feaTrain, train_features
  training labels   : traingnd, train_gnd, train_label, train_labels, Ytrain, Y_train, trainY,
                      gndTrain, train_L, Ltrain, L_train
  query features    : testdata, test_data, Xtest, X_test, testX, feaTest, test_features,
                      querydata, query_data, Xquery, X_query
  query labels      : testgnd, test_gnd, test_label, test_labels, Ytest, Y_test, testY, gndTest,
                      test_L, Ltest, L_test, querygnd, query_label, query_labels
  database features : dbdata, db_data, databasedata, database_data, retrievaldata,
                      retrieval_data, Xdb, X_db, Xdatabase, X_database   (optional)
  database labels   : dbgnd, db_gnd, db_label, db_labels, databasegnd, database_label,
                      database_labels, retrievalgnd, retrieval_label, Ydb, Y_db, L_db

The features are the image modality. Labels are 0/1 matrices or class-number vectors (one-hot
with the same columns across the subsets). The test set is the queries; the training set is
the training items and, when the file has no database arrays, also the database (those
protocols retrieve from the training set) **[choice]**; database arrays, when present, are the
database and the training items stay outside it.
"""
from __future__ import annotations

import numpy as np

from .dataset import DataError
from .labels import is_class_vector, one_hot
from .matlab import find_variable, orient_arrays

NAMES = {
    "train": (("traindata", "train_data", "Xtrain", "X_train", "trainX", "feaTrain", "train_features"),
              ("traingnd", "train_gnd", "train_label", "train_labels", "Ytrain", "Y_train", "trainY", "gndTrain",
               "train_L", "Ltrain", "L_train")),
    "query": (("testdata", "test_data", "Xtest", "X_test", "testX", "feaTest", "test_features", "querydata",
               "query_data", "Xquery", "X_query"),
              ("testgnd", "test_gnd", "test_label", "test_labels", "Ytest", "Y_test", "testY", "gndTest", "test_L",
               "Ltest", "L_test", "querygnd", "query_label", "query_labels")),
    "database": (("dbdata", "db_data", "databasedata", "database_data", "retrievaldata", "retrieval_data", "Xdb",
                  "X_db", "Xdatabase", "X_database"),
                 ("dbgnd", "db_gnd", "db_label", "db_labels", "databasegnd", "database_label", "database_labels",
                  "retrievalgnd", "retrieval_label", "Ydb", "Y_db", "L_db")),
}


def find_subsets(vars_: dict) -> dict | None:
    """{subset: ((features name, array), (labels name, array))} when the file has this layout
    (training and query features and labels at least), else None."""
    found = {}
    for subset, (features, labels) in NAMES.items():
        hit = (find_variable(vars_, features, prefixes=("",)), find_variable(vars_, labels, prefixes=("",)))
        if all(hit):
            found[subset] = hit
        elif any(hit) and subset == "database":
            return None  # half a database: not this layout (the caller reports what it finds)
    return found if {"train", "query"} <= set(found) else None


def load_subsets(path, vars_: dict) -> dict:
    """{'image', 'labels', 'query_idx', 'retrieval_idx', 'train_idx'}: queries first, then the
    training items, then the database items (when the file has them)."""
    found = find_subsets(vars_)
    order = [s for s in ("query", "train", "database") if s in found]
    label_arrays = [found[s][1][1] for s in order]
    label_names = [found[s][1][0] for s in order]
    vectors = [is_class_vector(a) for a in label_arrays]
    if any(vectors) and not all(vectors):
        raise DataError(f"{path}: {', '.join(label_names)} mix class-number vectors and 0/1 label matrices")
    if all(vectors):
        label_arrays, _ = one_hot(label_arrays, label_names, path)
    parts = {}
    for subset, labels in zip(order, label_arrays):
        (fkey, features), (lkey, _) = found[subset]
        parts[subset] = orient_arrays(path, {"image": features, "labels": labels}, {"image": fkey, "labels": lkey})
    widths = {s: (p["image"].shape[1:], p["labels"].shape[1]) for s, p in parts.items()}
    if len(set(widths.values())) > 1:
        raise DataError(f"{path}: the subsets differ in feature or label width: "
                        + ", ".join(f"{s} {w[0]} features, {w[1]} labels" for s, w in widths.items()))
    sizes = [len(parts[s]["labels"]) for s in order]
    starts = np.cumsum([0] + sizes)
    span = {s: np.arange(starts[i], starts[i + 1]) for i, s in enumerate(order)}
    return {"image": np.concatenate([parts[s]["image"] for s in order]),
            "labels": np.concatenate([parts[s]["labels"] for s in order]),
            "query_idx": span["query"], "train_idx": span["train"],
            "retrieval_idx": span.get("database", span["train"])}
