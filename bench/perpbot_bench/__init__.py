"""perpbot-bench: the real processes measured hop by hop, with the seed-style design and this
machine's floors measured beside them in the same run (see `cli`)."""
