"""Data: MXNet RecordIO, insightface-layout datasets and loaders (the synthetic face set is `fr.synth`)."""
