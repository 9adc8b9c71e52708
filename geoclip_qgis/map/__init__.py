"""What goes on the map: layers, their styles, the case report."""
