"""Pseudo-masks: off-the-shelf segmenters behind one interface, and label maps -> condition masks."""
