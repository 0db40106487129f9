"""Training, evaluation, prediction and export: plain functions, no argument parsing."""
