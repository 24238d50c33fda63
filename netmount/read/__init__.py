"""The read path: the reader and its tiers, the run scheduler, the prefetch policy."""
