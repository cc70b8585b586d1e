"""Test sets and prompt templates. `prepare` (hub download) is imported on its own: sttrl.data.prepare."""
from sttrl.data.datasets import (
    ARITH_DATASETS,
    DATASETS,
    Example,
    Question,
    dataset_path,
    load_dataset,
    load_ttt,
    make_arith,
    resolve_data_dir,
)
from sttrl.data.prompts import (
    FAMILIES,
    NUM_VARIANTS,
    encode_prompt,
    format_prompt,
    instruction,
    model_family,
)

__all__ = [
    "ARITH_DATASETS", "DATASETS", "Example", "Question", "dataset_path", "load_dataset",
    "load_ttt", "make_arith", "resolve_data_dir",
    "FAMILIES", "NUM_VARIANTS", "encode_prompt", "format_prompt", "instruction", "model_family",
]
