"""Vocabulary scaling laws (Tao et al., 2024): the laws and fits (scaling/) and the IsoFLOPs sweep (sweep/)."""
