"""Release-service client, shadow models, membership-inference attacks and audit metrics."""
