"""Plans: the ``plan.json`` schema (:mod:`.schema`), writing a plan directory (:mod:`.write`), loading it (:mod:`.load`)."""
