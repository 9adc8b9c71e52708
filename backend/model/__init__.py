"""The model: backbone, heads, location encoder, gallery, device, the engine and its state."""
