"""What is written and read on disk: atomic writes, hashes, JSON Schemas, status records,
located YAML reading with limits, the keyed audit trail."""
