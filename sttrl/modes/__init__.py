"""The two run modes: `question` (single-sample TTRL, one question at a time) and `dataset`
(the original TTRL over the whole test set). Both read the helpers in `common`, measure with
`evaluate` (the only place a reference answer is read for metrics) and log through `logger`."""
