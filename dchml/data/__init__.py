"""Cross-modal data for dchml: the `CrossModalData` container and its validation, the built-in
synthetic set, the paper's split protocol, and the loaders (MATLAB v5 / v7.3, text-list
folders, dchml's .npz). See docs/data.md."""
from .dataset import CrossModalData, DataError, UnlabeledItemsError, from_arrays
from .load import FORMATS, detect_format, load_dataset, load_recorded
from .npz import save_npz
from .splits import default_split_sizes, default_train_size, paper_split
from .synthetic import make_synthetic

__all__ = ["CrossModalData", "DataError", "FORMATS", "UnlabeledItemsError", "default_split_sizes",
           "default_train_size", "detect_format", "from_arrays", "load_dataset", "load_recorded", "make_synthetic",
           "paper_split", "save_npz"]
