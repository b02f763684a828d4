"""The fog's link to the dispatch chain: the outbox and anchors (`link`), instructions carried out (`dispatch`), local faults reported (`faults`)."""
