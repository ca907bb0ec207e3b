// CPU operators of the losses (schemas in ops/mds_loss.cpp): each a prepared CpuLossCall
// (loss_call.h), which checks, picks the path and runs it.
#include <torch/library.h>

#include "ops/cpu/loss_call.h"
#include "ops/loss_operators.h"

namespace dchml {

TORCH_LIBRARY_IMPL(dchml, CPU, m) {
  m.impl("labels_to_csr", &labels_to_csr_cpu);
  LossOperators<CpuLossCall>::register_kernels(m);
}

}  // namespace dchml
