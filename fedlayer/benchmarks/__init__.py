"""`fedlayer bench <name>`: each module times fedlayer against a baseline measured in the same run."""
