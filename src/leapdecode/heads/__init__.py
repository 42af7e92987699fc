"""Trained draft heads (EAGLE-style, Medusa): the models (model.py), their prompts (corpus.py) and
their training (train.py, `leapdecode train-head`); the drafters are drafters/eagle.py."""
