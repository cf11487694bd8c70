"""GPU and model data: typed, validated, with sources."""
