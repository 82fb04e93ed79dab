"""OTA image format, keys, signing and verification (MCUboot images). Not implemented yet."""
