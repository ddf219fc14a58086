"""Pure MIME layer: lean renditions, header policy and text conversions for slow links (no I/O)."""
