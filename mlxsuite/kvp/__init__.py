"""KV Prediction (Horton et al., 2024): the recipe and its evaluation; the model pieces are models/kv_prediction.py."""
