"""Examples a user copies: a custom verifier (my_verifier.py) and a tiny data set of one's own (own_data/)."""
