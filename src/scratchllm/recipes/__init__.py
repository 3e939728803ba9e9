"""The recipes layer: what is trained, on the shared loop. Pretraining (pretrain.py, with the mlm and
seq2seq objectives), the demo, classification, instruction tuning and DPO."""
