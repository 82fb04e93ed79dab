"""Package-data marker: lets an installed aiotkit find models/ (not imported on the node)."""
