"""Site process: local training (plain / FedProx / DP-SGD) and the secure-aggregation client side."""
