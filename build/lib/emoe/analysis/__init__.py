"""Reading sweep results: MLflow -> one DataFrame (``results``), model selection defined once (``selection``),
statistics on a DataFrame (``stats``), tables and figures (``report``), and the CLI (``cli``,
``python analysis/friedman.py``)."""
