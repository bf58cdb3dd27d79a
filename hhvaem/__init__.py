"""hhvaem: imputation, prediction and feature acquisition for tables with missing values."""

__version__ = "0.1.0"
