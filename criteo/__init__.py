"""The Criteo TSV -> HugeCTR raw binary converter behind preprocess_criteo.py (its docstring
has the rules); criteo.pipeline.preprocess runs it."""
