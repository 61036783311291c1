"""Dataset readers yielding posed images, the image cache and a small analytic scene."""
