"""Analysis of feature tables: classification with cross-validated error bars."""
