"""Facts of the competition: classes and shapes, the RLE codec, mask resizing, errors."""
