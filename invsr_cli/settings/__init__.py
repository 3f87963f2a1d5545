"""What each image gets and how it is chosen: settings and their resolution, preset files, the auto rules and the degradation analyser."""
