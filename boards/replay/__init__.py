"""Replay signals for the unix-sim board's accelerometer.

The shipped ``*.i16`` excerpts live in this folder (provenance in its README);
``signalfile`` is their format (written here, read on the node by
``firmware/drivers/replay.py``); ``cwru`` converts the full CWRU bearing recordings into it.
"""
