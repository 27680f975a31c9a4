"""Documents to token batches: corpora, the synthetic language, tokenizers and the pipeline."""
