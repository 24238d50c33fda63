"""Re-sharded views of a checkpoint (issue 12): new safetensors files made of a synthesized
header plus byte ranges of the source files; no byte is copied."""
