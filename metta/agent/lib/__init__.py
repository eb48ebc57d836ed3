"""Components of the MettaAgent graph, one file per concept."""
