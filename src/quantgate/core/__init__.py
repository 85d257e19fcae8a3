"""The shared model: findings, inventory, coverage, results, bounded I/O and untrusted text."""
