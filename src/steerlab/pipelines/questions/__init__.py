"""Question sets answered under steering configs (eval-questions): generate, judge, report."""
