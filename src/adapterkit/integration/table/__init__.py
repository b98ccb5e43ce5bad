"""The architecture table's entries, one module per model family (each exports ``ENTRIES``)."""
