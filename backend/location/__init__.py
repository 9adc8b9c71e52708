"""Location-embedding tools: features, embedding maps, point embeddings."""
