"""Event backbone: the Avro event catalogue, codec, schema registry, event logs and worker runtime."""
