"""Run: a partitioned program in this process (:mod:`.local`), a loaded plan in this process (:mod:`.loaded`) or one
process per stage (:mod:`.distributed`), with emulated links (:mod:`.links`)."""
