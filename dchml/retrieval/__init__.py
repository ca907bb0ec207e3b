"""Binary codes and retrieval in Hamming space: packing (`codes`), ranking and the persistent
index (`index`), and the exact metrics (`metrics`). Built on dchml.ops; knows nothing of training."""
from .codes import pack_codes, unpack_codes
from .index import HammingIndex, hamming_distance, hamming_histogram, hamming_topk
from .metrics import mean_average_precision, ndcg_at_k, pr_curve, precision_at_n
