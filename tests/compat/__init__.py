"""Compatibility tests: gear used the way Zuul and Nodepool used gear 0.16.

Everything here imports only gear 0.16's public names (and the server
internals Zuul's test suite touched), so the same tests also run against
gear 0.16.0 itself (run-against-gear016.sh): that proves they describe
0.16's behaviour, not ours.
"""
