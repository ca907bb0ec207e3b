"""The methods dchml trains, one small module each, over one training loop (dchml.method.train):
DCHML and its ablations (cross-modal), PSLDH and CSQ (one modality). `get_method(name)` returns
the method object; `METHOD_NAMES` lists them in the order reports use."""
from __future__ import annotations

from .base import FLAG_OF, METHOD_PARAMS, TASK_NAMES, Method, data_modalities, query_and_database, tasks_of
from .csq import CSQ
from .dchml import DCHML, DCHMLP, DCHMLQ
from .psldh import PSLDH

METHODS = {m.name: m for m in (DCHML(), DCHMLQ(), DCHMLP(), PSLDH(), CSQ())}
METHOD_NAMES = tuple(METHODS)


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method must be one of {', '.join(METHOD_NAMES)}, got {name!r}") from None


__all__ = ["METHODS", "METHOD_NAMES", "METHOD_PARAMS", "FLAG_OF", "TASK_NAMES", "Method", "get_method",
           "data_modalities", "tasks_of", "query_and_database"]
