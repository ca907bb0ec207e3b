"""Scale-out over torch.distributed: exact sharded evaluation (`evaluation`: hamming_topk and
mean_average_precision over a database split across ranks) and multi-process training
(`training`: Algorithm 1 with DistributedDataParallel), on the rank-agreement helpers of `group`."""
from .evaluation import hamming_topk, mean_average_precision

__all__ = ["hamming_topk", "mean_average_precision"]
