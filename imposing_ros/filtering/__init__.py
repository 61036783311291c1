"""Motion-model filter (pure numpy)."""
