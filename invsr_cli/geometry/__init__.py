"""Pure planning arithmetic: tile plans and blending (tiling), output sizes and passes (sizing)."""
