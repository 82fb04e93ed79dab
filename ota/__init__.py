"""Signed OTA images in MCUboot's format: ``image`` (the format table, parser, builder and
the fail-closed ``verify``), ``keys`` (signing keys, the trusted key set). See
ota/README.md."""
