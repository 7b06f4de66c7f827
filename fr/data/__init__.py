"""Data: MXNet RecordIO, insightface-layout datasets and loaders, and the procedural synthetic face set."""
