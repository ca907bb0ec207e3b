"""dchml: deep cross-modal hashing (DCHML/DCPH and PSLDH) with fused C++/CUDA kernels.

Public API, by layer (see README.md):
- codes and ranking: pack_codes, unpack_codes, hamming_distance, hamming_histogram, hamming_topk,
  HammingIndex;
- metrics: mean_average_precision, precision_at_n, pr_curve, ndcg_at_k;
- losses: margin_dynamic_softmax, partial_softmax, MarginDynamicSoftmax, dchml.nn;
- the method: dchml.models, dchml.train, dchml.data, encode, and the `dchml` command line;
- scale-out: dchml.distributed (sharded exact evaluation, multi-process training).
"""
from ._C import cuda_built
from .codes import pack_codes, unpack_codes
from .index import HammingIndex, hamming_distance, hamming_histogram, hamming_topk
from .metrics import mean_average_precision, ndcg_at_k, pr_curve, precision_at_n
from . import nn
from .autograd import MarginDynamicSoftmax
from .losses import margin_dynamic_softmax, partial_softmax
from .encoding import encode
from .models import CrossModalHashModel, IHNet, PHNet, THNet
from .train import TrainConfig
from . import data
from . import distributed  # sharded evaluation over torch.distributed: dchml.distributed.*

__version__ = "0.1.0"

__all__ = [
    "cuda_built", "__version__",
    "pack_codes", "unpack_codes", "hamming_distance", "hamming_histogram", "hamming_topk", "HammingIndex",
    "mean_average_precision", "precision_at_n", "pr_curve", "ndcg_at_k",
    "margin_dynamic_softmax", "partial_softmax", "MarginDynamicSoftmax", "nn",
    "encode", "CrossModalHashModel", "IHNet", "PHNet", "THNet", "TrainConfig",
    "data", "distributed",
]
