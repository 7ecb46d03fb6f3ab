"""Text in, token windows out: the corpus registry and downloads, llm.c shards, and the window sampler."""
