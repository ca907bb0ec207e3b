"""Cross-modal data for dchml: the `CrossModalData` container, the built-in synthetic set, the
paper's split protocol and the file loaders (MATLAB v5 / v7.3, text lists, dchml's .npz)."""
from .dataset import CrossModalData, DataError, from_arrays
from .splits import default_split_sizes, paper_split
from .synthetic import make_synthetic

__all__ = ["CrossModalData", "DataError", "from_arrays", "make_synthetic", "paper_split",
           "default_split_sizes"]
