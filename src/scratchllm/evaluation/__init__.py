"""The evaluation layer: measuring a model. Tasks as data (tasks.py) run by one runner (runner.py) on
scored continuations (scoring.py): perplexity.py, choice.py (multiple choice) and fewshot.py, one call
for any of them in lm.py and their reports in report.py; the classification report (metrics.py),
instruction responses (responses.py), accounting (info.py) and pictures of one forward pass (inspect.py)."""
