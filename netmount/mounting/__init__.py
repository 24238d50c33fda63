"""A live mount: the FUSE face (the only FUSE binding user), the daemon, its lifecycle and stats."""
