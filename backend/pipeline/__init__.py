"""User actions end to end: a run, its summary, evaluation, fine-tuning, Ray."""
