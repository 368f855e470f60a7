"""One Flask-free predict path for every protocol."""
