"""Everything between intake and store: parsing, threads, intake pipeline, the store."""
