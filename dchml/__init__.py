"""dchml: deep cross-modal hashing (DCHML/DCPH and PSLDH) with fused C++/CUDA kernels.

Public API, by layer (see README.md):
- codes and ranking: pack_codes, unpack_codes, hamming_distance, hamming_histogram, hamming_topk,
  HammingIndex;
- metrics: mean_average_precision, precision_at_n, pr_curve, ndcg_at_k;
- losses: margin_dynamic_softmax, partial_softmax, MarginDynamicSoftmax, dchml.nn;
- the method: dchml.models, dchml.train, dchml.data, encode, and the `dchml` command line;
- scale-out: dchml.distributed (sharded exact evaluation, multi-process training).
"""
import sys

from . import data
from . import distributed  # scale-out: dchml.distributed.mean_average_precision, dchml.distributed.training
from .losses import modules as nn
from .losses.functional import margin_dynamic_softmax, partial_softmax
from .method import models, train
from .method.config import TrainConfig
from .method.encoding import encode
from .method.models import CrossModalHashModel, IHNet, PHNet, THNet
from .ops.autograd import MarginDynamicSoftmax
from .ops.library import cuda_built
from .retrieval.codes import pack_codes, unpack_codes
from .retrieval.index import HammingIndex, hamming_distance, hamming_histogram, hamming_topk
from .retrieval.metrics import mean_average_precision, ndcg_at_k, pr_curve, precision_at_n

# Stable module paths of the public API: `import dchml.nn`, `from dchml.train import TrainConfig`
# and `from dchml.models import IHNet` keep working although the code lives in its layer's package.
sys.modules.update({"dchml.nn": nn, "dchml.models": models, "dchml.train": train})

__version__ = "0.1.0"

__all__ = [
    "cuda_built", "__version__",
    "pack_codes", "unpack_codes", "hamming_distance", "hamming_histogram", "hamming_topk", "HammingIndex",
    "mean_average_precision", "precision_at_n", "pr_curve", "ndcg_at_k",
    "margin_dynamic_softmax", "partial_softmax", "MarginDynamicSoftmax", "nn",
    "encode", "CrossModalHashModel", "IHNet", "PHNet", "THNet", "TrainConfig",
    "data", "distributed",
]
