"""Scene simulator on real OpenStreetMap geometry."""
