"""Measurements of the product (speed, memory, effect); each script prints one JSON object last."""
