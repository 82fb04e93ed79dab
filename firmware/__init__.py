"""Package-data marker: lets an installed aiotkit find firmware/ (not imported on the node)."""
