"""The losses as users call them: functions (`functional`) and torch.nn modules (`modules`, also
`dchml.nn`), over the fused operators of dchml.ops."""
from .functional import margin_dynamic_softmax, partial_softmax, check_reduction
from .modules import MarginDynamicSoftmaxLoss, PartialSoftmaxLoss
