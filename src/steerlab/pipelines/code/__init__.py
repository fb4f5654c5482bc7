"""Code steering (seed 001): flips, drift and coefficient selection."""
