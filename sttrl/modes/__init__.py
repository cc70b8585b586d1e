"""The two run modes: `question` (single-sample TTRL, one question at a time) and `dataset`
(the original TTRL over the whole test set). Both read the helpers in `common`."""
