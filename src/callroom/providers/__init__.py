"""Speech and language providers behind one small protocol per role (see `base`)."""
