"""batch.yaml: the Spec model, safe YAML loading, schema messages, input globs, .env."""
