"""Package-data marker: lets an installed aiotkit find boards/ (not imported on the node)."""
