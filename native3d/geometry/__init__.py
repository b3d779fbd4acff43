"""Per-object geometry: loading, normalization, signed distance, sampling, triplanes, rendering."""
