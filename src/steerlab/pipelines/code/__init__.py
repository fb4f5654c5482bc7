"""Code steering: flips, drift and coefficient selection."""
