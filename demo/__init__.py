"""The README's demo: a simulated gateway with all three plugins."""
