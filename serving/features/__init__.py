"""A model's input schema: feature kinds and the conversion of instances into arrays."""
