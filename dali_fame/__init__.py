"""dali_fame."""
