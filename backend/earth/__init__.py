"""What an answer means on the ground: rasters, confidence areas, regions, places, likelihood."""
