"""The two storage conventions every package shares, defined once: the ignore label and the SDT's int8 clip.

No imports, so losses/, metrics/ and models/ take them from here without loading data_utils' readers (and the
data packages import them from here too).
"""
IGNORE_INDEX = 255  # train id of unlabelled pixels in every label map (uint8 maps hold classes 0..254)
SDT_CLIP = 127  # int8 SDT range: distances are clipped to [-SDT_CLIP, SDT_CLIP] px; φ = sdt_int8 / SDT_CLIP
