"""Arrays and frames in, results out: Dice, threshold search, gating, post-processing. No torch, no files."""
