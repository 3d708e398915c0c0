"""Pure byte transforms: hashing, compression, erasure coding and the shard file format."""
