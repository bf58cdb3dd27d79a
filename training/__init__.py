"""Training side: reading user tables and fitting HH-VAEM models."""
