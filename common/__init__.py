"""Code shared by every FedOnco-Bench process: config, data, model, wire format, metrics."""
