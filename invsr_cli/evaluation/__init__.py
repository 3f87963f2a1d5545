"""`invsr degrade` and `invsr eval`: degraded pairs and the paper's quality table on the user's photos."""
