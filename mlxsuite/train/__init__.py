"""The run scaffold, the trainer, the LM recipe and its evaluation."""
