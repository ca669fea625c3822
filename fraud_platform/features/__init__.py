"""Features shared by training and serving: real-time card windows, on-demand transaction features, packing."""
