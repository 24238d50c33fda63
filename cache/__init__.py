"""A block cache: fixed-size blocks keyed by (content id, block index), on disk or in memory."""
