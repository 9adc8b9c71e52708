"""A finished run read back: its file, judging answers, the case report."""
