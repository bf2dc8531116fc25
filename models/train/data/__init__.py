"""Data for the offline module: readers of image data in the layout users already have (the world is in proxy.world)."""
