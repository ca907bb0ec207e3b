"""Data for dchml: the `CrossModalData` container (cross-modal, or one modality) and its
validation, the built-in synthetic set, the paper's split protocol, the field's named protocols
(CIFAR-10, NUS-WIDE, MS-COCO, ImageNet-100), and the loaders (MATLAB v5 / v7.3, text-list
folders, dchml's .npz, list-file folders, the CIFAR-10 python folder). See docs/data.md."""
from .dataset import CrossModalData, DataError, UnlabeledItemsError, from_arrays
from .formats import FORMATS, detect_format
from .load import load_dataset, load_recorded
from .npz import save_npz
from .protocols import PROTOCOLS, default_protocol, protocol_topk
from .splits import default_split_sizes, default_train_size, paper_split
from .synthetic import make_synthetic

__all__ = ["CrossModalData", "DataError", "FORMATS", "PROTOCOLS", "UnlabeledItemsError", "default_protocol",
           "default_split_sizes", "default_train_size", "detect_format", "from_arrays", "load_dataset",
           "load_recorded", "make_synthetic", "paper_split", "protocol_topk", "save_npz"]
