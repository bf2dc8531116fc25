"""The synthetic world: shapes, their renderer, the world generator and its ID splits."""
