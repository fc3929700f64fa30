"""Training, below the train stage: the precision rules (fp32 master weights, compute dtype, what a run held),
the chat templates for base models, and the saved model's cast to its save dtype."""
