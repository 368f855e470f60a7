"""Edge bundles (`serving export NAME VERSION --edge DIR`): scoring without a server."""
