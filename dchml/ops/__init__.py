"""The only door to the compiled operators `torch.ops.dchml.*`.

Every wrapper here checks its inputs and raises a clear Python exception (naming the argument, what
was expected and what was received) before a kernel runs, so that a kernel never sees an input it
was not written for. The modules: `library` loads the extension, `checks` holds the checks both
operator families share, `hamming` wraps the ranker, `loss` the two losses (labels in every form,
the per-step fast path, fake kernels for torch.compile), `autograd` the loss as a plain
`torch.autograd.Function`.
"""
from .library import cuda_built
from .checks import (FLOAT_CODES, check_codes, check_scalar, check_scale, require_device_support,
                     require_same_device)
from .hamming import (MAX_BITS, MAX_CUDA_BITS, hamming_ap_from_ranking, hamming_average_precision,
                      hamming_distance, hamming_histogram, hamming_histogram_relevant, hamming_isa, hamming_topk,
                      relevance)
from .loss import (loss_tables, mds_loss_backward, mds_loss_reduced, mds_loss_rows, mds_loss_rows_for_backward,
                   normalise_labels, partial_softmax_reduced, partial_softmax_rows, prepare_loss_inputs)
