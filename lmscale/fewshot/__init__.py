"""Few-shot tasks, the batched decoder, the evaluator and the lm-evaluation-harness adapter."""
