"""The pure core: numpy only (no torch, no HTTP, no Label Studio)."""
