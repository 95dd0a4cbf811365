"""Studies: search runs, their stored trials, and queries over them."""
