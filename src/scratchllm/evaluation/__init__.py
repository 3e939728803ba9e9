"""The evaluation layer: measuring a model. Language-model scores (lm.py: perplexity, few-shot,
multiple choice), the classification report (metrics.py), instruction responses (responses.py),
accounting (info.py) and pictures of one forward pass (inspect.py)."""
