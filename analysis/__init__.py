"""Reading sweep results: MLflow -> one DataFrame (results), statistics (stats), tables and figures (report)."""
