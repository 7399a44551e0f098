"""Safety administration: policies, taxonomy, red-team runs."""
