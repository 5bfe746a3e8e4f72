"""Data stage: the embedded corpus, dataset readers, audio loading and features, bad-input handling."""
