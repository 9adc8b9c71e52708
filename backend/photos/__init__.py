"""From the paths a user names to model input: walking folders, opening photos, EXIF, areas."""
