"""The library beneath the scripts: one module per thing it owns (docs/architecture.md)."""
