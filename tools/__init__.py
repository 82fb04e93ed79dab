"""The aiot command-line tools."""
