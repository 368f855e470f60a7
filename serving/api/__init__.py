"""HTTP layer: thin Flask blueprints over the Flask-free core."""
