"""The procedural face data set: identities (identity), drawing frame (frame), shapes (shapes), images (render),
and the data set on disk (dataset)."""
