"""Image and pose encoders, the ImPosing model and its checkpoint format."""
