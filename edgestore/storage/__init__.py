"""Where shard bytes live: backends behind one small protocol, and shard placement."""
