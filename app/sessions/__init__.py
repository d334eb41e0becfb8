"""Blueprint: session status, listing, cancel, retry and delete."""
