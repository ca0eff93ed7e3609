"""The model: SAM-ViT-B, CLIP-L, the GPT, the VLM that joins them, presets, weight loaders, generation."""
