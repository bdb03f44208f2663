"""The library beneath the scripts: one module per thing it owns (README: How the code is organised)."""
