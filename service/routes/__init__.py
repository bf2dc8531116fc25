"""HTTP routes: thin functions that string the pipeline's stages together."""
